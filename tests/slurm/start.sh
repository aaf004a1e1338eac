#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for tests/shard.rs: munge, slurmctld and slurmd from
# Debian's packages (slurmctld slurmd slurm-client munge), state and logs under $DIR.
# Prints the SLURM_CONF to export; exits non-zero (saying why) when the cluster does not come up.
#   bash tests/slurm/start.sh DIR
set -euo pipefail
dir=${1:-/tmp/biodc-slurm}
mkdir -p "$dir/state" "$dir/spool"
host=$(hostname -s)
cpus=$(nproc)
sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" -e "s|@DIR@|$dir|g" \
    "$(dirname "$0")/slurm.conf.in" > "$dir/slurm.conf"
export SLURM_CONF=$dir/slurm.conf
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! pgrep -x munged >/dev/null; then
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
    else
        /usr/sbin/munged --force
    fi
fi
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
/usr/sbin/slurmctld -f "$SLURM_CONF" -i
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 1 30); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mix|alloc"; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "slurm did not come up: $(sinfo -h 2>&1 | head -1); see $dir/*.log" >&2
exit 1
