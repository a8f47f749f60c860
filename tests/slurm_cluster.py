"""A throw-away single-node SLURM cluster for tests: slurmctld + slurmd in a temporary folder.

`SlurmCluster.start()` writes a slurm.conf for this host (one node, pinned to 127.0.0.1, free
ports, auth/none so no munge daemon is needed), starts both daemons, waits until the node is
idle and checks that the controller answering is this one (its StateSaveLocation): the default
ports can belong to another cluster. `stop()` ends exactly the two PIDs it started (TERM, then
KILL) and any job processes that are still running under them are ended by slurmd itself.

Needs Debian's `slurmctld slurmd slurm-client` packages and root (slurmd runs jobs as their
user); `skip_reason()` says why not, for pytest.skip. The folder is made with mode 755 under
/tmp: slurmd and the jobs must enter it, and pytest's tmp_path (0700) would not do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
PARTITION = "debug"
# Enough CPUs for a 2-trial array and a 2-task trial at once on a 2-core test machine
# (slurmd believes the configuration: SlurmdParameters=config_overrides).
CPUS = 4
START_TIMEOUT_S = 30.0


def skip_reason() -> str | None:
    """Why a cluster cannot start here, or None."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM not installed (missing {', '.join(missing)}; "
            "apt-get install slurmctld slurmd slurm-client)"
        )
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd runs jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="slurm-test-", dir="/tmp"))
        self.root.chmod(0o755)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.pids: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        for sub in ("etc", "state", "log", "run", "spool"):
            (self.root / sub).mkdir(exist_ok=True)
        r = self.root
        self.conf.write_text(f"""ClusterName=testcluster
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/none
CredType=cred/none
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/slurmd.%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=10
Waittime=0
SchedulerParameters=sched_interval=1,bf_interval=1
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def run(self, *cmd: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; its stdout."""
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **self.env}
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def start(self) -> SlurmCluster:
        self._write_conf()
        env = {**os.environ, **self.env}
        for daemon in DAEMONS:
            subprocess.run([daemon, "-f", str(self.conf)], env=env, check=True, timeout=60)
            pid_file = self.root / "run" / f"{daemon}.pid"
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (pid_file.is_file() and pid_file.read_text().strip()):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{daemon} wrote no PID file; see {self.root}/log")
                time.sleep(0.05)
            self.pids.append(int(pid_file.read_text()))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).strip()
            if state.startswith(("idle", "mix", "alloc")):
                config = self.run("scontrol", "show", "config")
                if f"{self.root}/state" not in config:
                    self.stop()
                    raise RuntimeError("a foreign slurmctld answered on this cluster's port")
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the SLURM node did not become idle; see {self.root}/log")

    def jobs(self) -> list[str]:
        """Every job the controller knows that is not finished: 'id|state' lines."""
        out = self.run("squeue", "-h", "-r", "-o", "%i|%T")
        return [line for line in out.splitlines() if line.strip()]

    def _active(self) -> bool:
        out = self.run("squeue", "-h", "-r", "-t", "RUNNING,COMPLETING", "-o", "%i", check=False)
        return bool(out.strip())

    def stop(self) -> None:
        """Cancels this cluster's jobs (their slurmstepd would outlive slurmd), then ends exactly
        the daemons it started (TERM, wait, KILL) and removes its folder."""
        if self.pids:
            self.run("scancel", "--full", "--user", str(os.geteuid()), check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._active():
                time.sleep(0.2)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids = []
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether pid runs (a daemon is not our child, so there is no zombie to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
