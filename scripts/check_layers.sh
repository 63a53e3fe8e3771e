#!/usr/bin/env bash
# The layering rules of README.md's source layout, checked over the code's own paths:
# a lower layer never names a higher one (in `use` lines or in paths inside code).
# Prints every violation and exits non-zero if there is one.
set -uo pipefail
cd "$(dirname "$0")/.."

fail=0
# forbid DIR LAYER... : no `crate::LAYER` path anywhere under DIR.
forbid() {
    local dir=$1
    shift
    local pat
    pat=$(printf '%s|' "$@")
    pat="crate::(${pat%|})\b"
    if out=$(grep -rnE "$pat" "$dir" --include='*.rs'); then
        echo "layering: $dir must not reach $*:"
        echo "$out" | sed 's/^/  /'
        fail=1
    fi
}

forbid src/keyring.rs reactor bdev nvme vdisk frontend config rpc target bench sim replicate
forbid src/reactor bdev nvme vdisk frontend config rpc target bench sim replicate
forbid src/nvme bdev reactor vdisk frontend config rpc target bench sim replicate
forbid src/bdev vdisk frontend config rpc target bench sim replicate
forbid src/vdisk frontend config rpc target bench sim replicate
forbid src/frontend vdisk config rpc target bench sim replicate
forbid src/config rpc target bench sim replicate
forbid src/sim frontend config rpc target bench
forbid src/bench rpc sim replicate
# send/receive speak to targets only through their RPC socket and NBD server.
forbid src/replicate vdisk target sim bench

# Inside vdisk, the data path (the agents, the map, the bitmap of segments that may be
# mapped, the table and its searches, the
# messages and the pool state every core reads) does not reach the control path
# (controller, views, cow, snapshot, lifecycle, split, alloc, commit, load, check,
# meta, disk, pool).
data_path=(src/vdisk/map.rs src/vdisk/maybe_mapped.rs src/vdisk/table.rs src/vdisk/leaf.rs src/vdisk/search.rs src/vdisk/diff.rs src/vdisk/msg.rs src/vdisk/shared.rs src/vdisk/agent/*.rs)
allowed='map|maybe_mapped|table|leaf|search|diff|msg|shared|CowPolicy'
if out=$(grep -nE '(\bsuper|crate::vdisk)::\{' "${data_path[@]}"); then
    echo "layering: the vdisk data path names vdisk items in groups (write one path per item):"
    echo "$out" | sed 's/^/  /'
    fail=1
fi
if out=$(grep -noE '(\bsuper|crate::vdisk)::[A-Za-z_]+' "${data_path[@]}" \
    | grep -vE ":(super|crate::vdisk)::(${allowed})\$" \
    | grep -vE '^src/vdisk/agent/[a-z]+\.rs:[0-9]+:super::(Agent|fault|io|discard)$'); then
    echo "layering: the vdisk data path reaches the control path:"
    echo "$out" | sed 's/^/  /'
    fail=1
fi
if out=$(grep -noE 'crate::[a-z_]+' "${data_path[@]}" | grep -vE ':crate::(bdev|reactor|vdisk)$'); then
    echo "layering: the vdisk data path reaches above bdev and reactor:"
    echo "$out" | sed 's/^/  /'
    fail=1
fi

if [ "$fail" -eq 0 ]; then
    echo "layering: ok"
fi
exit "$fail"
