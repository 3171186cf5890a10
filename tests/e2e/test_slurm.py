"""The SLURM plugin for real: a one-node SLURM cluster on this machine runs a participant analysis,
whose outputs must equal those of a Linear run.

The cluster (munged, slurmctld, slurmd) runs from a temporary folder with its own munge key,
configuration and free ports, so it touches neither /etc nor a cluster the machine may have;
the clients find it through ``SLURM_CONF``. The test skips, with the reason, only where the
daemons cannot start (packages missing, not root, a daemon that exits at start).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
SLURM_CONF = """\
ClusterName=bidsvlmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _why_not() -> str:
    """Why a SLURM cluster cannot start here ('' when it may)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"SLURM or munge not installed ({', '.join(missing)} not on PATH; Debian: "
                "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root (SlurmUser=root); not root here"
    return ""


def _log_tail(path, n=15) -> str:
    path = Path(path)
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _start(cmd, base, name, env):
    """A daemon in the foreground of a child process; skip if it exits at start."""
    log = open(base / f"{name}.stdout", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    time.sleep(1)
    if proc.poll() is not None:
        pytest.skip(f"{name} cannot start here (exit {proc.returncode}): "
                    f"{_log_tail(base / f'{name}.stdout')} {_log_tail(base / f'{name}.log')}")
    return proc


def _wait_idle(env, base, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               env=env).stdout.strip()
        if state == "idle":
            return
        time.sleep(1)
    raise AssertionError(f"the SLURM node is not idle after {timeout} s (state {state!r}):\n"
                         f"{_log_tail(base / 'slurmctld.log')}\n{_log_tail(base / 'slurmd.log')}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster; yields the environment variables its clients need."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    # munged wants every folder above its socket searchable by all: not pytest's 0700 tmp dirs
    base = Path(tempfile.mkdtemp(prefix="bids_vlm_slurm_"))
    for sub in ("munge", "state", "spool"):
        (base / sub).mkdir()
    for folder in (base, base / "munge"):
        folder.chmod(0o755)
    host = socket.gethostname().split(".")[0]
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = base / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, base=base, cpus=os.cpu_count(), mem_mb=mem_mb,
                                      ctld_port=_free_port(), slurmd_port=_free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    try:
        munge = base / "munge"
        key = munge / "munge.key"  # this cluster's own key: /etc/munge is left alone
        key.touch(mode=0o600)
        key.write_bytes(os.urandom(1024))
        procs.append(_start(["munged", "--foreground", f"--socket={munge}/munge.socket",
                             f"--key-file={key}", f"--pid-file={munge}/munged.pid",
                             f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed"],
                            base, "munged", env))
        procs.append(_start(["slurmctld", "-D", "-i", "-f", str(conf)], base, "slurmctld", env))
        procs.append(_start(["slurmd", "-D", "-N", host, "-f", str(conf)], base, "slurmd", env))
        _wait_idle(env, base)
        yield {"SLURM_CONF": str(conf)}
    finally:
        if len(procs) == 3:
            subprocess.run(["scancel", "--full", "--partition", "debug"], env=env,
                           capture_output=True)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def _files(root) -> set:
    """Output files relative to ``root``, without the config logs (their names have a time)."""
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*")
            if p.is_file() and p.parent.name != "logs"}


def assert_same_outputs(a, b):
    files = _files(a)
    assert files == _files(b)
    for name in sorted(files):
        fa, fb = Path(a) / name, Path(b) / name
        if name.endswith(".nii.gz"):
            ia, ib = nib.load(fa), nib.load(fb)
            np.testing.assert_array_equal(ia.affine, ib.affine, err_msg=name)
            np.testing.assert_array_equal(ia.get_fdata(), ib.get_fdata(), err_msg=name)
        elif name.endswith(".h5"):
            with h5py.File(fa) as ha, h5py.File(fb) as hb:
                _same_h5(ha, hb, name)
        elif name.endswith((".tsv", ".json")):
            assert fa.read_bytes() == fb.read_bytes(), name


def _same_h5(ha, hb, name):
    """Two HDF5 groups hold the same datasets, subgroups (the association's layers) and
    attributes."""
    assert sorted(ha) == sorted(hb), name
    for key in ha:
        if isinstance(ha[key], h5py.Group):
            _same_h5(ha[key], hb[key], f"{name}:{key}")
        else:
            np.testing.assert_array_equal(ha[key][()], hb[key][()], err_msg=f"{name}:{key}")
    assert sorted(ha.attrs) == sorted(hb.attrs), name
    for key in ha.attrs:
        np.testing.assert_array_equal(ha.attrs[key], hb.attrs[key], err_msg=name)


@pytest.fixture(scope="module")
def small_planted(tmp_path_factory):
    from datagen import make_planted_dataset

    return make_planted_dataset(tmp_path_factory.mktemp("slurm") / "bids", n_subjects=1)


def test_slurm_run_equals_linear_run(slurm_cluster, small_planted, tmp_path, monkeypatch):
    monkeypatch.delenv("LOGNAME", raising=False)  # unset in many containers; nipype needs it
    args = [small_planted.root, "participant", "--participant-label", "01", "--no-encoding",
            "--layers", "1", "2", "-q"]
    linear, cluster = tmp_path / "linear", tmp_path / "slurm"
    run_cli(args[0], linear, *args[1:], "-w", tmp_path / "work_linear")
    plugin_args = '{"sbatch_args": "--mem=2G --time=20", "max_jobs": 2}'
    run_cli(args[0], cluster, *args[1:], "-w", tmp_path / "work_slurm", "--plugin", "SLURM",
            "--plugin-args", plugin_args, env=slurm_cluster, timeout=900)
    # the nodes ran as SLURM jobs: every batch script nipype submitted left its job's log
    batch = tmp_path / "work_slurm" / "bids_vlm_participant" / "batch"
    scripts, job_logs = list(batch.glob("batchscript_*.sh")), list(batch.glob("slurm-*.out"))
    assert len(scripts) >= 8 and len(job_logs) == len(scripts)
    assert not list((tmp_path / "work_linear").rglob("slurm-*.out"))
    assert_same_outputs(linear, cluster)
    assert (cluster / "sub-01.html").is_file()
