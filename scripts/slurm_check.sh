#!/usr/bin/env bash
# Checks `srun kiln train` on a one-node Slurm cluster set up on this machine (as root): installs
# Slurm and MUNGE from Debian, writes a minimal /etc/slurm/slurm.conf for this host, starts
# munged, slurmctld and slurmd, then trains the same tiny run under `srun -n 2 --mpi=pmix` and
# under `mpirun -np 2` and requires identical metrics. Not part of the test suite (it changes the
# machine's configuration); run by hand: scripts/slurm_check.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
KILN="$PWD/$BUILD/kiln"
[ -x "$KILN" ] || { echo "build kiln first (scripts/build.sh)"; exit 1; }
export DEBIAN_FRONTEND=noninteractive
command -v slurmd >/dev/null || apt-get install -y -q slurmd slurmctld slurm-client munge >/dev/null
host=$(hostname -s)
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=kiln
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
chown -R munge:munge /run/munge /var/log/munge /etc/munge /var/lib/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done

WORK=$(mktemp -d /tmp/kiln-slurm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/c.txt" <<'PY'
import random, sys
random.seed(1)
w = ["the", "cat", "sees", "a", "dog", "river", "stone", "light"]
open(sys.argv[1], "w").write("".join(random.choice(w) + (".\n" if i % 9 == 8 else " ") for i in range(20000)))
PY
cat > "$WORK/t.yaml" <<CONF
seed: 3
model: {architectures: [LlamaForCausalLM], hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: [$WORK/c.txt], val_fraction: 0.05}
train: {steps: 8, batch_size: 4, seq_len: 32, eval_every: 4, eval_batches: 2, checkpoint_every: 8, samples: 0}
CONF
srun -n 2 --mpi=pmix --oversubscribe "$KILN" train "$WORK/t.yaml" --threads 1 run_dir="$WORK/srun"
mpirun --oversubscribe --allow-run-as-root --mca btl self,vader -np 2 \
  "$KILN" train "$WORK/t.yaml" --threads 1 run_dir="$WORK/mpirun"
if diff <(cut -d, -f1-2 "$WORK/srun/metrics.jsonl") <(cut -d, -f1-2 "$WORK/mpirun/metrics.jsonl"); then
  echo "srun -n 2 and mpirun -np 2: identical losses"
else
  echo "srun and mpirun runs differ"; exit 1
fi
