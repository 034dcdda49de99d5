"""Production deployment: package the toolkit for YARN (``package``), submit jobs watched
(``submit``, ``yarn``), EMR-style artefacts (``emr``), ``tfos-deploy`` (``cli``) and the probe that
runs in YARN containers (``probe``).  Independent of the pseudo-cluster (``cluster.pseudo``).

Kept empty on purpose: this package ships in the code zip (for the probe), where only the probe's
own imports may run.
"""
