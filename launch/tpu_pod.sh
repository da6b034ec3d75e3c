#!/usr/bin/env bash
# SMoG pre-training on a Cloud TPU VM slice: one smog_jax.main per worker.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v4-32 \
#       --workdir gs://BUCKET/runs/r50 [options] [-- smog_jax.main flags...]
#
# Steps (each command is printed before it runs; --dry-run only prints):
#   1. reuse the TPU VM NAME if `gcloud compute tpus tpu-vm describe` finds
#      it, else create it;
#   2. put the code on every worker: the files of this checkout that git
#      tracks or would track (copied as a tarball), or --repo URL cloned at
#      --ref;
#   3. install the package's run-time set at requirements.txt's pins and
#      jax[tpu] at the pinned jax version;
#   4. run `python3 -m smog_jax.main --config CONFIG --workdir WORKDIR ...` on
#      all workers at once (`--worker=all`); jax.distributed finds the pod by
#      itself. Each worker tees its log to ~/smog_logs/<hostname>.log.
# The workdir must be on gs:// (all workers write one checkpoint). Running the
# script again with the same arguments resumes from the newest checkpoint.
#
# Options:
#   --name NAME            TPU VM name (required)
#   --zone ZONE            e.g. us-central2-b (required)
#   --accelerator TYPE     e.g. v4-32, v5litepod-16 (required to create)
#   --workdir gs://...     checkpoints and metrics (required)
#   --config FILE[:VARIANT]  default configs/imagenet_resnet50.py
#   --version RUNTIME      TPU VM software version, default tpu-ubuntu2204-base
#   --project PROJECT      gcloud project (default: gcloud's)
#   --spot                 create a Spot VM
#   --repo URL --ref REF   clone URL at REF on the workers instead of copying
#   --dry-run              print the commands, run nothing
set -euo pipefail

name="" zone="" accelerator="" workdir="" project="" repo="" ref="main"
config="configs/imagenet_resnet50.py" version="tpu-ubuntu2204-base"
spot=0 dry_run=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --accelerator) accelerator=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "Unknown option $1 (see --help); pass smog_jax.main flags after --." >&2
       exit 2 ;;
  esac
done
if [ -z "$name" ] || [ -z "$zone" ] || [ -z "$workdir" ]; then
  echo "--name, --zone and --workdir are required (see --help)." >&2
  exit 2
fi
case "$workdir" in
  gs://*) ;;
  *) echo "--workdir must be a gs:// path (every worker writes to it), got '$workdir'." >&2
     exit 2 ;;
esac

repo_root=$(cd "$(dirname "$0")/.." && pwd)
jax_version=$(sed -n 's/^jax==//p' "$repo_root/requirements.txt")

# Prints a command (arguments quoted only where the shell needs it), then runs
# it unless --dry-run: what is printed is exactly what runs.
quote() {
  local a=$1
  if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$a"
  else printf "'%s'" "${a//\'/\'\\\'\'}"; fi
}
print_cmd() {
  local first=1 a
  for a in "$@"; do
    [ $first = 1 ] || printf ' '
    quote "$a"; first=0
  done
  printf '\n'
}
run() { print_cmd "$@"; [ $dry_run = 1 ] || "$@"; }

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[ -n "$project" ] && where+=("--project=$project")
ssh_all() { run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
    --command "$1"; }

# 1. Create or reuse the slice.
describe=("${gcloud_tpu[@]}" describe "$name" "${where[@]}" '--format=value(state)')
create=("${gcloud_tpu[@]}" create "$name" "${where[@]}"
        "--accelerator-type=${accelerator:-ACCELERATOR}" "--version=$version")
[ $spot = 1 ] && create+=(--spot)
print_cmd "${describe[@]}"
if [ $dry_run = 0 ] && "${describe[@]}" >/dev/null 2>&1; then
  echo "# $name exists: reusing it."
else
  if [ -z "$accelerator" ]; then
    echo "$name may not exist: pass --accelerator to create it." >&2
    [ $dry_run = 1 ] || exit 2
  fi
  echo "# only if the describe above fails (no such TPU VM):"
  run "${create[@]}"
fi

# 2. Code on every worker.
if [ -n "$repo" ]; then
  ssh_all "rm -rf ~/smog_jax && git clone --depth 1 --branch $(quote "$ref") $(quote "$repo") ~/smog_jax"
else
  tarball=/tmp/smog_jax_code.tar.gz
  run bash -c "cd $(quote "$repo_root") && git ls-files -z -co --exclude-standard | tar czf $tarball --null -T -"
  run "${gcloud_tpu[@]}" scp "$tarball" "$name:smog_jax_code.tar.gz" "${where[@]}" --worker=all
  ssh_all "rm -rf ~/smog_jax && mkdir -p ~/smog_jax && tar xzf ~/smog_jax_code.tar.gz -C ~/smog_jax"
fi

# 3. Dependencies (the TPU build of the pinned jax).
ssh_all "cd ~/smog_jax && python3 -m pip install -q -c requirements.txt -e . && python3 -m pip install -q \"jax[tpu]==$jax_version\""

# 4. Train: one process per worker, all at once.
main=(python3 -m smog_jax.main --config "$config" --workdir "$workdir" "$@")
main_line=""
for a in "${main[@]}"; do main_line+="$(quote "$a") "; done
ssh_all "set -o pipefail; cd ~/smog_jax && mkdir -p ~/smog_logs && ${main_line}2>&1 | tee ~/smog_logs/\$(hostname).log"
echo "# logs: ${gcloud_tpu[*]} ssh $name ${where[*]} --worker=all --command='tail -n 5 ~/smog_logs/*.log'"
