# Two commands for a newcomer: `make demo` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install check-java check-python clean hadoop-jars

demo: install
	$(PY) -m tfos_jobs.ctr demo

test: install hadoop-jars
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

install: check-java $(STAMP)

# The jars pyspark lacks (cluster/pseudo/jars.py): Hadoop 3.5.0 server jars and the Kafka 4.1.1 broker
# for the pseudo-cluster, spark-sql-kafka 4.2.0 and hadoop-aws 3.5.0 + AWS SDK modules for Spark;
# fetched once with Maven into ~/.cache/tfos-jobs/<set>-<version> (or TFOS_HADOOP_JARS,
# TFOS_KAFKA_JARS, TFOS_SPARK_KAFKA_JARS, TFOS_HADOOP_AWS_JARS); a no-op when the caches are complete.
hadoop-jars: install
	$(PY) -m cluster fetch

# The tested versions are pinned in constraints.txt; setup.cfg keeps the supported ranges.
$(STAMP): setup.cfg pyproject.toml constraints.txt | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is required, found " + sys.version.split()[0])'

check-java:
	@java_bin=$${JAVA_HOME:+$$JAVA_HOME/bin/}java; \
	if ! command -v $$java_bin >/dev/null 2>&1; then \
	  echo "error: Java 17+ is required by Spark and was not found: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2; exit 1; fi; \
	ver=$$($$java_bin -version 2>&1 | head -1 | sed -E 's/[^"]*"(1\.)?([0-9]+).*/\2/'); \
	if [ "$$ver" -lt 17 ] 2>/dev/null || ! [ "$$ver" -eq "$$ver" ] 2>/dev/null; then \
	  echo "error: Java 17+ is required by Spark; $$java_bin is version '$$ver'" >&2; exit 1; fi

clean:
	rm -rf work/ .pytest_cache
