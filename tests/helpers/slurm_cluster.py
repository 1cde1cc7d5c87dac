"""A throw-away single-node SLURM cluster in a temporary folder (Debian's slurm-wlm and munge).

Nothing is installed here (`.ci/run` installs the packages); this module writes a key, a minimal slurm.conf and
starts munged, slurmctld and `slurmd -N <node>` as the current user, each from its own files, so the host's
/etc/slurm and /etc/munge are never read or touched. `stop()` ends exactly the daemons it started, by PID.
Accounting is off (no slurmdbd): job status must then come from `squeue`, as on such clusters
(known-traps.md: the SLURM executor's default `sacct` polling never sees a job finish).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct")
SBIN = (Path("/usr/sbin"), Path("/usr/bin"))
NODE = "localhost"
PARTITION = "bidsafe"


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, "sbatch", "squeue", "srun", "sinfo") if find_binary(name) is None]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def slurm_conf(root: Path, *, user: str, cpus: int, memory_mb: int, munge_socket: Path) -> str:
    """One controller and one node on this host; no accounting, no cgroups (a container has none to give)."""
    host = socket.gethostname().split(".")[0]
    return "\n".join([
        "ClusterName=bidsafe-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        # finished jobs stay visible to squeue for this long: the executor's status polls must see them end
        "MinJobAge=600",
        "KillWait=5",
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    root: Path
    conf: Path
    munge_socket: Path
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        """Client commands that find this cluster's slurm.conf by themselves: the SLURM executor's job step
        strips every SLURM_* variable (SLURM_CONF included) before its `srun`, so inside a job only a wrapper
        on PATH (exported by sbatch) reaches this cluster rather than the host's /etc/slurm."""
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """What a SLURM client (sbatch, squeue, srun inside a job) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def logs(self) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.is_file():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM each daemon this cluster started (by PID, never by name), then SIGKILL what is left."""
        for name in reversed(DAEMONS):
            pid = self.pids.get(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.pids.pop(name)
        deadline = time.monotonic() + 20
        while self.pids and time.monotonic() < deadline:
            for name, pid in list(self.pids.items()):
                if not _alive(pid):
                    self.pids.pop(name)
            time.sleep(0.2)
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # a daemon that forked is not our child: ask the kernel instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and ") Z " in stat.read_text(errors="replace"))


def _wait_for(predicate, what: str, cluster: Cluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"SLURM test cluster: {what} not ready after {timeout:.0f} s\n{cluster.logs()}")


def start(root: Path, *, cpus: int = 2, memory_mb: int = 8000) -> Cluster:
    """munged, slurmctld and slurmd in the foreground (-F/-D), so each PID is the daemon's own."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # munged refuses a key or socket in a folder others may write to
    for folder in ("state", "spool", "munge"):
        (root / folder).mkdir(mode=0o700, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, user=getpass.getuser(), cpus=cpus, memory_mb=memory_mb,
                               munge_socket=munge_socket), encoding="utf-8")
    cluster = Cluster(root=root, conf=conf, munge_socket=munge_socket)
    cluster.bin.mkdir(exist_ok=True)
    for name in CLIENTS:
        real = find_binary(name)
        if real:
            wrapper = cluster.bin / name
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec "{real}" "$@"\n', encoding="utf-8")
            wrapper.chmod(0o755)
    env = {**os.environ, **cluster.env}
    quiet = {"stdin": subprocess.DEVNULL, "start_new_session": True, "env": env}
    try:
        munged = [find_binary("munged"), "-F", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                  f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                  f"--seed-file={root / 'munge' / 'munged.seed'}"]
        with open(root / "munged.out", "wb") as out:
            cluster.pids["munged"] = subprocess.Popen(munged, stdout=out, stderr=out, **quiet).pid
        _wait_for(munge_socket.exists, "munged", cluster)
        with open(root / "slurmctld.out", "wb") as out:
            command = [find_binary("slurmctld"), "-D", "-i", "-f", str(conf)]
            cluster.pids["slurmctld"] = subprocess.Popen(command, stdout=out, stderr=out, **quiet).pid
        # slurmd names itself after the host unless told: -N makes it the configured node (known-traps.md)
        with open(root / "slurmd.out", "wb") as out:
            command = [find_binary("slurmd"), "-D", "-N", NODE, "-f", str(conf)]
            cluster.pids["slurmd"] = subprocess.Popen(command, stdout=out, stderr=out, **quiet).pid
        _wait_for(lambda: _node_idle(env), "the node", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(env: dict[str, str]) -> bool:
    result = subprocess.run([find_binary("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                            env=env, timeout=30, check=False)
    return result.returncode == 0 and result.stdout.strip().startswith("idle")
