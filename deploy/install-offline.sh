#!/usr/bin/env bash
# Install a wheelhouse made by `make wheelhouse` on a machine without network
# (docs/offline-install.md): check every part's sha256, join the parts, pip install --no-index.
#
#   bash install-offline.sh [--python PYTHON] [FOLDER] [-- PIP_OPTIONS...]
#
# FOLDER   the folder with the parts, SHA256SUMS and wheelhouse.json (default: this script's)
# PYTHON   the Python that receives the packages (default: python3); a virtual environment's
#          python installs into that environment
# TMPDIR   where the parts are unpacked for the install (about the wheelhouse's size, removed after)
#
# Exit 2: a part missing or damaged, or a wheelhouse built for another Python, machine or image;
# exit 1: pip failed. Nothing is installed unless every check passed.
set -euo pipefail

fail() {
  echo "install-offline: $1" >&2
  exit "${2:-2}"
}

python=python3
folder=$(cd "$(dirname "$0")" && pwd)
pip_options=()
while (($#)); do
  case $1 in
    --python) python=${2:?--python needs a path}; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0" | cut -c3-; exit 0 ;;
    --) shift; pip_options=("$@"); break ;;
    -*) fail "unknown option $1 (see --help)" ;;
    *) folder=$1; shift ;;
  esac
done

[[ -f $folder/SHA256SUMS ]] || fail "$folder has no SHA256SUMS: give the folder that holds the wheelhouse parts"
have_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
  fail "cannot run the Python '$python': pass --python /path/to/python"

if ! report=$(cd "$folder" && sha256sum --check --quiet SHA256SUMS 2>/dev/null); then
  bad=$(sed -n 's/: FAILED.*//p' <<<"$report" | sort -u | tr '\n' ' ')
  fail "missing or damaged in $folder: ${bad}— copy these again from the build machine"
fi

# project version python_version machine provided(comma-separated or -)
read -r project version want_python machine provided < <("$python" -c '
import json, sys
info = json.load(open(sys.argv[1]))
provided = ",".join(info["provided"]) or "-"
print(info["project"], info["version"], info["python_version"], info["machine"], provided)' \
  "$folder/wheelhouse.json")
[[ $have_python == "$want_python" ]] ||
  fail "this wheelhouse is for Python $want_python, $python is $have_python: pass --python python$want_python or build one for $have_python"
[[ $(uname -m) == "$machine" ]] || fail "this wheelhouse is for $machine machines, this one is $(uname -m)"
if [[ $provided != - ]]; then
  "$python" -c '
import importlib.metadata, sys
for name in sys.argv[1].split(","):
    importlib.metadata.version(name)' "$provided" 2>/dev/null ||
    fail "this wheelhouse leaves out ${provided//,/, } for an image that ships them, and $python lacks them: carry the full wheelhouse"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/wheelhouse.XXXXXX")
trap 'rm -rf "$work"' EXIT
mapfile -t parts < <(awk -v dir="$folder" '$2 ~ /^wheelhouse\.tar\.[0-9]+$/ { print dir "/" $2 }' "$folder/SHA256SUMS")
cat "${parts[@]}" | tar -x -C "$work"
echo "install-offline: ${#parts[@]} parts checked and joined in ${SECONDS} s; installing $project $version"

"$python" -m pip install --no-index --find-links "$work/wheels" "${pip_options[@]}" "$project==$version" ||
  fail "pip install failed (exit $?)" 1
echo "install-offline: $project $version installed into $("$python" -c 'import sys; print(sys.prefix)') in ${SECONDS} s"
