"""A one-node SLURM cluster on localhost for the tests: munge, MariaDB, slurmdbd, slurmctld and slurmd.

Every file of it (configs, state, logs, sockets, the database) lives in one directory, its daemons
listen on free ports of 127.0.0.1, and `stop()` ends them all, so it leaves nothing running. Clients
(sbatch, sacct, and Snakemake's SLURM executor plugin, which calls them) find it through `cluster.env`
(SLURM_CONF), with one exception: inside each job the plugin starts `srun` with every SLURM_*
variable but the job's ids removed (snakemake-executor-plugin-slurm-jobstep), SLURM_CONF included, so
srun reads SLURM's default /etc/slurm/slurm.conf. For as long as the cluster runs, that file is
therefore one line that includes ours; the cluster does not start where that file is something else.

Accounting (slurmdbd on MariaDB) is not optional: the executor plugin reads job states with `sacct`,
and without a database it submits the first job and never sees it end.

Needs root (slurmd starts each job as its user) and Debian's packages slurm-wlm, slurmdbd, munge and
mariadb-server (`.ci/install-slurm`); `missing_requirements()` says which is absent.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess
import time

PROGRAMS = ("munged", "munge", "mariadb-install-db", "mariadbd", "mariadb", "mariadb-admin", "slurmdbd", "slurmctld",
            "slurmd", "sacctmgr", "scontrol", "sinfo", "sbatch", "sacct", "squeue", "scancel", "unmunge")
CLUSTER, ACCOUNT, PARTITION = "pearbench", "pearbench", "debug"
DB_USER, DB_PASSWORD = "slurm", "pearbench"
START_TIMEOUT_S = 60
SYSTEM_CONF = pathlib.Path("/etc/slurm/slurm.conf")  # where srun looks without SLURM_CONF
SYSTEM_CONF_MARK = "# pear-bench test cluster of pid"
# The daemons and mariadb-install-db live in sbin, which a non-login shell's PATH may lack.
PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


def missing_requirements() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    absent = [name for name in PROGRAMS if shutil.which(name, path=PATH) is None]
    if absent:
        return (f"needs Debian's slurm-wlm, slurmdbd, munge and mariadb-server (.ci/install-slurm); "
                f"missing: {', '.join(absent)}")
    if os.geteuid() != 0:
        return "needs root: slurmd starts each job as its user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    """The machine's memory in MiB, less a margin: slurmd drains a node that has less than RealMemory."""
    kib = next(int(line.split()[1]) for line in pathlib.Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    return int(kib / 1024 * 0.9)


class ClusterError(RuntimeError):
    """A daemon did not start; the message carries the end of its log."""


class ClusterUnavailable(RuntimeError):
    """The machine has a SLURM config of its own (or another test cluster runs): the cluster would clash with it."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class SlurmCluster:
    def __init__(self, root: pathlib.Path, cpus: int = 2):
        self.root = root
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]  # slurmd finds its node by the short host name
        self.ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": PATH}
        self.procs: list[tuple[str, subprocess.Popen, pathlib.Path]] = []
        self.account, self.partition = ACCOUNT, PARTITION

    # --- configuration -----------------------------------------------------------------------------

    def write_configs(self) -> None:
        r = self.root
        for sub in ("state", "spool", "mysql", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        # munge's own checks: its key readable by its user only, its directories not writable by others.
        (r / "munge").chmod(0o700)
        key = r / "munge/munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        auth = f"AuthType=auth/munge\nAuthInfo=socket={r}/munge/munge.socket\n"
        self.conf.write_text(
            f"ClusterName={CLUSTER}\n"
            f"SlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={self.ports['slurmctld']}\nSlurmdPort={self.ports['slurmd']}\n"
            "SlurmUser=root\nSlurmdUser=root\n" + auth +
            "CredType=cred/munge\n"
            f"StateSaveLocation={r}/state\nSlurmdSpoolDir={r}/spool\n"
            f"SlurmctldPidFile={r}/slurmctld.pid\nSlurmdPidFile={r}/slurmd.pid\n"
            f"SlurmctldLogFile={r}/slurmctld.log\nSlurmdLogFile={r}/slurmd.log\n"
            # No cgroups: a container rarely lets us create them, and the tests need no limits enforced.
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU_Memory\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={self.ports['slurmdbd']}\n"
            # The munge socket for talking to slurmdbd: AuthInfo covers only the daemons' own traffic.
            f"AccountingStoragePass={r}/munge/munge.socket\n"
            # The plugin puts the rule name in the job's comment; the tests read it back with sacct.
            "AccountingStoreFlags=job_comment\n"
            "MpiDefault=none\nReturnToService=2\n"
            # A cancelled job's processes get SIGKILL 5 s after SIGTERM (default 30 s).
            "KillWait=5\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb()} State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n")
        dbd = r / "slurmdbd.conf"
        dbd.write_text(
            auth +
            f"DbdHost={self.node}\nDbdAddr=127.0.0.1\nDbdPort={self.ports['slurmdbd']}\nSlurmUser=root\n"
            f"LogFile={r}/slurmdbd.log\nPidFile={r}/slurmdbd.pid\n"
            "StorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={self.ports['mariadb']}\n"
            f"StorageUser={DB_USER}\nStoragePass={DB_PASSWORD}\nStorageLoc=slurm_acct_db\n")
        dbd.chmod(0o600)  # slurmdbd refuses a config (it holds the password) that others can read

    # --- processes ---------------------------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], log: pathlib.Path) -> None:
        """Start a daemon in the foreground, as our child: stop() can always end it."""
        out = open(self.root / f"{name}.out", "w")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        out.close()
        self.procs.append((name, proc, log))

    def call(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=self.env, check=check)

    def wait_until(self, what: str, ready) -> None:
        """Poll `ready()` until it is true; fail with the newest daemon's log when a daemon died or time ran out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for name, proc, log in self.procs:
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                       + self.log_tail(name, log))
            try:
                if ready():
                    return
            except subprocess.SubprocessError:
                pass
            if time.monotonic() > deadline:
                name, _, log = self.procs[-1]
                raise ClusterError(f"no {what} within {START_TIMEOUT_S} s:\n" + self.log_tail(name, log))
            time.sleep(0.2)

    def log_tail(self, name: str, log: pathlib.Path) -> str:
        text = "".join(p.read_text(errors="replace") for p in (self.root / f"{name}.out", log) if p.is_file())
        return text[-3000:]

    def claim_system_conf(self) -> None:
        """Point /etc/slurm/slurm.conf at our config, unless it is someone else's (a stale one of ours is replaced)."""
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            owner = re.match(rf"{SYSTEM_CONF_MARK} (\d+)", SYSTEM_CONF.read_text(errors="replace"))
            if owner is None or pid_alive(int(owner.group(1))):
                raise ClusterUnavailable(f"{SYSTEM_CONF} exists ({'another test cluster' if owner else 'a real SLURM'}"
                                         " setup); the test cluster will not replace it")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(f"{SYSTEM_CONF_MARK} {os.getpid()}: removed when its cluster stops\n"
                               f"Include {self.conf}\n")

    def release_system_conf(self) -> None:
        if SYSTEM_CONF.is_file() and SYSTEM_CONF.read_text().startswith(f"{SYSTEM_CONF_MARK} {os.getpid()}:"):
            SYSTEM_CONF.unlink()

    def start(self) -> None:
        r = self.root
        self.write_configs()
        self.claim_system_conf()
        munge_socket = r / "munge/munge.socket"
        # --force: munged wants its socket's directory open to every user; only root talks to this one.
        self.spawn("munged", ["munged", "--foreground", "--force", f"--socket={munge_socket}",
                              f"--key-file={r}/munge/munge.key", f"--pid-file={r}/munge/munged.pid",
                              f"--log-file={r}/munge/munged.log", f"--seed-file={r}/munge/munged.seed"],
                   r / "munge/munged.log")
        self.wait_until("munge credentials", lambda: subprocess.run(
            f"munge -n -S {munge_socket} | unmunge -S {munge_socket}", shell=True, capture_output=True,
            timeout=10).returncode == 0)

        mysql_socket = r / "mysql.sock"
        self.call("mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={r}/mysql",
                  "--auth-root-authentication-method=socket", "--skip-test-db")
        self.spawn("mariadbd", ["mariadbd", "--no-defaults", "--user=root", f"--datadir={r}/mysql",
                                f"--socket={mysql_socket}", f"--port={self.ports['mariadb']}",
                                "--bind-address=127.0.0.1", f"--pid-file={r}/mariadb.pid",
                                f"--log-error={r}/mariadb.log", "--innodb-buffer-pool-size=64M"],
                   r / "mariadb.log")
        self.wait_until("MariaDB", lambda: self.call("mariadb-admin", "--no-defaults", f"--socket={mysql_socket}",
                                                     "ping", check=False).returncode == 0)
        self.call("mariadb", "--no-defaults", f"--socket={mysql_socket}", "-e",
                  f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
                  f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'127.0.0.1';")

        self.spawn("slurmdbd", ["slurmdbd", "-D"], r / "slurmdbd.log")
        self.wait_until("slurmdbd", lambda: self.call("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
        # The cluster before slurmctld registers with it; the account and user the jobs are billed to.
        self.call("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.call("sacctmgr", "-i", "add", "account", ACCOUNT, f"Cluster={CLUSTER}", "Description=tests",
                  "Organization=pear-bench")
        self.call("sacctmgr", "-i", "add", "user", "root", f"Account={ACCOUNT}", f"DefaultAccount={ACCOUNT}")

        self.spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], r / "slurmctld.log")
        self.wait_until("slurmctld", lambda: self.call("scontrol", "ping", check=False).returncode == 0)
        self.spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)], r / "slurmd.log")
        self.wait_until(f"node {self.node} idle",
                        lambda: self.call("sinfo", "-h", "-n", self.node, "-o", "%t").stdout.strip() == "idle")

    def stop(self) -> None:
        """Cancel every job, then end the daemons in reverse order of their start (SIGKILL after 20 s)."""
        try:
            if any(name == "slurmctld" and proc.poll() is None for name, proc, _ in self.procs):
                self.call("scancel", "--full", "--user=root", check=False)
                self.drain_queue()
        except subprocess.SubprocessError:
            pass  # slurmctld hangs: stop the daemons all the same
        finally:
            for _, proc, _ in reversed(self.procs):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            self.procs.clear()
            self.release_system_conf()

    # --- queries -----------------------------------------------------------------------------------

    def queue(self) -> list[str]:
        """The jobs slurmctld still holds (pending, running or being cancelled), as "<id> <state>"."""
        return self.call("squeue", "-h", "-o", "%i %T").stdout.splitlines()

    def drain_queue(self, timeout: float = 30) -> list[str]:
        """Wait until no job is left in the queue, at most `timeout` seconds; what is left then.

        30 s: a cancelled job's processes get SIGKILL after KillWait (5 s), and then leave the queue.
        """
        deadline = time.monotonic() + timeout
        while (left := self.queue()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def jobs(self) -> list[dict[str, str]]:
        """Every batch job the database knows (not their steps): id, name, state and comment."""
        fields = ("JobID", "JobName", "State", "Comment")
        out = self.call("sacct", "-X", "-n", "-P", "--allusers", "--starttime=2000-01-01",
                        f"--format={','.join(fields)}").stdout
        return [dict(zip(fields, line.split("|", len(fields) - 1))) for line in out.splitlines() if line]
