#!/usr/bin/env bash
# A real single-node SLURM cluster for development and CI: munge, MariaDB + slurmdbd (sacct,
# which submitit needs to see job states), slurmctld and slurmd, with two fake GPUs (gres) so
# that `--gres=gpu:1` is scheduled for real. Debian packages, run as root, no systemd.
#
#   bash slurm/local-cluster.sh up     # install if needed, configure, start, wait until idle
#   bash slurm/local-cluster.sh down   # stop every daemon
#   bash slurm/local-cluster.sh status
set -euo pipefail

STATE=/var/lib/e2e-slurm          # fake GPU device files, logs
ETC=/etc/slurm
PKGS="slurm-wlm slurm-client slurmctld slurmd munge slurmdbd mariadb-server"

log() { echo "[local-cluster] $*"; }

install() {
  local missing=""
  for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    log "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
}

alive() { # a killed daemon lingers as a zombie that kill -0 reports alive: read its state
  local pid; pid=$(pgrep -x "$1" | head -1) || return 1
  [ -n "$pid" ] && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null
}

configure() {
  mkdir -p "$STATE/log" "$ETC" /var/spool/slurmctld /var/spool/slurmd /run/munge
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 9 / 10 ))
  for i in 0 1; do [ -c "$STATE/nvidia$i" ] || mknod "$STATE/nvidia$i" c 1 3; done
  cat > "$ETC/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
# Short credential lifetime: a requeued job starts again in seconds, not after 120 s.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=bf_interval=2,sched_interval=2
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
ReturnToService=2
MinJobAge=300
# Preemption as many clusters run it: a job in a higher-tier partition requeues the jobs of a
# lower tier that hold what it needs; without PreemptParameters=send_user_signal they get
# SIGTERM only, no --signal=USR2, then SIGKILL once the partition's GraceTime is over (with
# none, at once: a cell could not checkpoint; tests/test_slurm.py).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
# DefMemPerCPU: without it every job takes the node's memory and jobs run one at a time.
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000 PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP DefMemPerCPU=1000 PriorityTier=2
CONF
  cat > "$ETC/gres.conf" <<CONF
AutoDetect=off
Name=gpu File=$STATE/nvidia[0-1]
CONF
  cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
  chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
  [ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chown munge:munge /etc/munge/munge.key /run/munge && chmod 400 /etc/munge/munge.key
  alive munged || runuser -u munge -- /usr/sbin/munged
}

start_mariadb() {
  if ! alive mariadbd; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (mariadbd --user=mysql >"$STATE/log/mariadb.log" 2>&1 &)
    for _ in $(seq 60); do mariadb -e "select 1" >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

wait_for() { # wait_for <seconds> <command...>
  local t=$1; shift
  for _ in $(seq $((t * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

up() {
  install
  configure
  start_munge
  start_mariadb
  alive slurmdbd || slurmdbd
  wait_for 30 sacctmgr -i show cluster || { log "slurmdbd did not answer"; exit 1; }
  sacctmgr -i add cluster local >/dev/null 2>&1 || true
  alive slurmctld || slurmctld
  alive slurmd || slurmd -N localhost
  wait_for 60 bash -c 'sinfo -h -N -o %T | grep -qE "^(idle|mixed|allocated)"' || {
    log "the node did not come up"; tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log"
    exit 1; }
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  log "up: $(sinfo -h -o '%P %D %T %G')"
}

down() {
  for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
  mariadb-admin shutdown 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
