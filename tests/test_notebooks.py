"""The prototyping notebooks in notebooks/: stored without outputs, and executed headless end to end.

Each notebook runs in its own kernel (nbclient, the ``python3`` kernel of this interpreter), with its
storage root under the test's tmp_path and the pseudo-cluster section switched off
(``TFOS_NOTEBOOK_CLUSTER=0``; the ``cluster``-marked test runs it on the pseudo-cluster). The kernel is
shut down even when a cell fails, and every process it started (Spark's JVM and executors, TF nodes)
must be gone afterwards.
"""
import os
import sys
import time

import pytest

import hdfs_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = ["ctr_prototyping", "survey_prototyping", "automated_retraining"]
CELL_TIMEOUT_S = 400


def notebook_path(name):
    return os.path.join(NOTEBOOKS, f"{name}.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    import nbformat
    nb = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None and "execution" not in cell.metadata, \
                f"{name} cell {index} has outputs: strip them (e.g. `jupyter nbconvert --clear-output --inplace`)"
    assert "widgets" not in nb.metadata


def _alive(proc):
    import psutil
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_notebook(name, tmp_path, monkeypatch, cluster="0"):
    """Execute a notebook in a fresh kernel; return (executed notebook, seconds, processes left behind)."""
    import nbformat
    import psutil
    from nbclient import NotebookClient

    class Client(NotebookClient):
        started_by_kernel = []

        async def _async_cleanup_kernel(self):
            # before the kernel goes: remember what it started (the JVM's children die with their parent
            # only if it stops them, so check them all afterwards)
            pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
            if pid:
                try:
                    kernel = psutil.Process(pid)
                    self.started_by_kernel[:] = [kernel] + kernel.children(recursive=True)
                except psutil.Error:
                    pass
            await super()._async_cleanup_kernel()

    monkeypatch.setenv("TFOS_NOTEBOOK_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("TFOS_NOTEBOOK_CLUSTER", cluster)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(notebook_path(name), as_version=4)
    client = Client(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", shutdown_kernel="graceful",
                    resources={"metadata": {"path": NOTEBOOKS}})
    started = time.monotonic()
    try:
        client.execute()
    finally:
        seconds = time.monotonic() - started
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in client.started_by_kernel) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftover = [p for p in client.started_by_kernel if _alive(p)]
        described = []
        for proc in leftover:           # by pid, only what this kernel started
            try:
                described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                proc.kill()
            except psutil.Error:
                pass
        executed = tmp_path / f"{name}.executed.ipynb"   # kept with the test's tmp_path, to look at
        try:
            nbformat.write(nb, str(executed))
        except Exception as err:  # never hide the notebook's own error
            print(f"could not write {executed}: {err}")
        print(f"\n{name}: executed in {seconds:.0f} s ({executed}); seconds per code cell: {cell_seconds(nb)}")
    return nb, seconds, described


def cell_seconds(nb):
    """Wall time of each executed code cell, from nbclient's timing metadata."""
    from datetime import datetime
    out = []
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.status.busy" in timing and "iopub.status.idle" in timing:
            busy, idle = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.status.busy", "iopub.status.idle"))
            out.append(round((idle - busy).total_seconds()))
    return out


def outputs_text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def notebook_tail(nb, lines=60):
    """The last lines the executed notebook printed (streams and errors): for assertion messages."""
    from cluster.testing import tail
    text = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for o in cell.outputs:
            if o.output_type == "stream":
                text.append(o.get("text", ""))
            elif o.output_type == "error":
                text.append(f"[cell {index}] {o.get('ename')}: {o.get('evalue')}\n")
    return f"--- notebook output (last {lines} lines) ---\n" + tail("".join(text), lines)


def images(nb):
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "display_data" and "image/png" in o.get("data", {}))


def check_executed(nb, name, leftover):
    assert not leftover, f"{name}: processes left behind by the kernel: {leftover}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"{name}: not every code cell ran\n{notebook_tail(nb)}"
    # the kernel is this virtual environment's interpreter
    assert f"kernel python: {sys.executable}" in outputs_text(code[0]), notebook_tail(nb)
    assert "notebook done in" in outputs_text(code[-1]), notebook_tail(nb)
    assert nb.metadata["language_info"]["name"] == "python"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_survey_notebook_runs(tmp_path, monkeypatch):
    nb, seconds, leftover = run_notebook("survey_prototyping", tmp_path, monkeypatch)
    check_executed(nb, "survey_prototyping", leftover)
    text = "".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "acc majority" in text and "logloss LR" in text, notebook_tail(nb)
    assert images(nb) == 2          # accuracy vs baselines; answer distributions of a few respondents
    root = tmp_path / "root" / "survey"
    assert hdfs_io.is_published(str(root / "export")) and hdfs_io.is_published(str(root / "predictions"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_retraining_notebook_runs(tmp_path, monkeypatch):
    """The drift is caught, the challenger promoted, the rest of the stream scored by it: better than the
    old champion on the rows after the drift, and one figure of live AUC."""
    import re
    nb, seconds, leftover = run_notebook("automated_retraining", tmp_path, monkeypatch)
    check_executed(nb, "automated_retraining", leftover)
    text = "".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "aliases now: {'champion': 2}" in text and "promoted" in text, notebook_tail(nb)
    found = re.search(r"old champion after the drift: AUC (0\.\d+) \| new champion: (0\.\d+)", text)
    assert found and float(found.group(2)) > float(found.group(1)), notebook_tail(nb)
    assert "predictions per model version: {'1': " in text and "'2': " in text, notebook_tail(nb)
    assert images(nb) == 1, notebook_tail(nb)


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctr_notebook_on_the_pseudo_cluster(pseudo_cluster, tmp_path, monkeypatch):
    """The whole notebook: the prototype on local storage and local-cluster, then its "one change"
    section on HDFS storage and the Spark standalone master. (One run covers both: the section is the
    notebook's last code, and a run without it would repeat the rest at CI's cost.)"""
    nb, seconds, leftover = run_notebook("ctr_prototyping", tmp_path, monkeypatch, cluster="1")
    check_executed(nb, "ctr_prototyping", leftover)
    text = "".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "validation AUC" in text and "pseudo-cluster section skipped" not in text, notebook_tail(nb)
    assert images(nb) == 1          # ROC, calibration and loss per step: one figure, three panels
    root = tmp_path / "root" / "ctr"
    assert hdfs_io.is_published(str(root / "export")) and list((root / "model" / "tensorboard").iterdir())
    assert f"on {pseudo_cluster['spark']['master']}: export hdfs://" in text, notebook_tail(nb)
