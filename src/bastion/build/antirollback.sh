#!/bin/sh
# bastion anti-rollback in the initrd (ADR 0028, section 2026-12-06; ADR 0036): refuse to
# go on when the UKI systemd-boot loaded carries a security version below the TPM fuse
# counter. One script for both initrds: a device's systemd initrd runs it as
# bastion-antirollback.service (build/device_initrd.py), the QEMU test initrd's /init
# sources it (build/vm-init.sh) and calls bastion_antirollback_check on the ESP it mounted.
#
# POSIX sh; tools: od, dd, tr, sed, grep, wc, tail, mktemp, rm, mkdir, sleep, mount, umount
# (coreutils, grep, util-linux; or busybox) and tpm2-tools (tpm2_getcap and tpm2_nvread,
# or the multi-call `tpm2`). No awk, no objcopy: the PE section table is read with od
# (bastion_uki_osrel).
#
# Fail closed: every unreadable or malformed input is a refusal. The one absence that
# passes is the fuse counter's NV index (0x013BA500) not being defined: the factory
# state, before the first commit blew a fuse (bastion.tpm.fuses reads it as 0).
#
# Environment: BASTION_EFIVARS (default /sys/firmware/efi/efivars), BASTION_ESP (an
# ESP already mounted; default: mount the partition LoaderDevicePartUUID names,
# read-only), BASTION_WAIT (seconds to wait for that partition; default 30).

BASTION_LOADER_GUID=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f # systemd-boot's variables
BASTION_FUSE_INDEX=0x13ba500 # bastion.tpm.fuses.DEFAULT_BASE_INDEX: the counter's bits
BASTION_OSREL_MAX=4096       # bytes of .osrel read at most
BASTION_PE_SECTIONS_MAX=96   # sections in a PE file at most (as the PE/COFF spec)

_ar_err() { echo "anti-rollback: $*" >&2; }

_ar_tpm2() { # SUBCOMMAND ARGS: tpm2_SUBCOMMAND, else the multi-call tpm2
    _ar_sub=$1
    shift
    if command -v "tpm2_$_ar_sub" >/dev/null 2>&1; then
        "tpm2_$_ar_sub" "$@"
    else
        tpm2 "$_ar_sub" "$@"
    fi
}

_ar_hex() { # FILE OFFSET COUNT: the bytes as lowercase hex, nothing if out of the file
    od -An -v -tx1 -j "$2" -N "$3" "$1" 2>/dev/null | tr -d ' \n'
}

_ar_le() { # FILE OFFSET WIDTH: an unsigned little-endian integer; fails if truncated
    _ar_w=$3
    # shellcheck disable=SC2046 # one word per byte
    set -- $(od -An -v -tu1 -j "$2" -N "$3" "$1" 2>/dev/null)
    [ $# -eq "$_ar_w" ] || return 1
    _ar_v=0
    _ar_m=1
    for _ar_b in "$@"; do
        _ar_v=$((_ar_v + _ar_b * _ar_m))
        _ar_m=$((_ar_m * 256))
    done
    echo "$_ar_v"
}

bastion_efivar() { # NAME: systemd-boot's variable NAME (UTF-16LE, ASCII values only)
    _ar_f=${BASTION_EFIVARS:-/sys/firmware/efi/efivars}/$1-$BASTION_LOADER_GUID
    [ -r "$_ar_f" ] || return 1
    tail -c +5 "$_ar_f" | tr -d '\000'
}

bastion_booted_uki() { # the path on the ESP of the UKI systemd-boot loaded
    if _ar_p=$(bastion_efivar LoaderBootCountPath) && [ -n "$_ar_p" ]; then
        _ar_p=$(printf '%s' "$_ar_p" | tr '\\' /)
    elif _ar_p=$(bastion_efivar LoaderEntrySelected) && [ -n "$_ar_p" ]; then
        _ar_p=/EFI/Linux/$_ar_p
    else
        _ar_err "no LoaderBootCountPath or LoaderEntrySelected EFI variable (not booted by systemd-boot?)"
        return 1
    fi
    case "$_ar_p" in
    *..* | *[!A-Za-z0-9._+/-]* | //*)
        _ar_err "the booted entry path $_ar_p is not a plain ESP path"
        return 1
        ;;
    /*.efi | /*.EFI) echo "$_ar_p" ;;
    *)
        _ar_err "the booted entry $_ar_p is not a UKI (/....efi)"
        return 1
        ;;
    esac
}

bastion_uki_osrel() { # FILE: the .osrel section of the PE file (NULs dropped)
    _ar_u=$1
    [ -r "$_ar_u" ] || { _ar_err "$_ar_u cannot be read"; return 1; }
    [ "$(_ar_hex "$_ar_u" 0 2)" = 4d5a ] || { _ar_err "$_ar_u is not a PE file (no MZ)"; return 1; }
    _ar_pe=$(_ar_le "$_ar_u" 60 4) && [ "$_ar_pe" -le 4096 ] \
        || { _ar_err "$_ar_u: PE header offset out of range"; return 1; }
    [ "$(_ar_hex "$_ar_u" "$_ar_pe" 4)" = 50450000 ] \
        || { _ar_err "$_ar_u is not a PE file (no PE signature)"; return 1; }
    _ar_n=$(_ar_le "$_ar_u" $((_ar_pe + 6)) 2) && _ar_opt=$(_ar_le "$_ar_u" $((_ar_pe + 20)) 2) \
        || { _ar_err "$_ar_u: truncated PE header"; return 1; }
    [ "$_ar_n" -le "$BASTION_PE_SECTIONS_MAX" ] \
        || { _ar_err "$_ar_u has $_ar_n sections (at most $BASTION_PE_SECTIONS_MAX)"; return 1; }
    _ar_t=$((_ar_pe + 24 + _ar_opt))
    _ar_i=0
    _ar_at=
    while [ "$_ar_i" -lt "$_ar_n" ]; do
        _ar_name=$(_ar_hex "$_ar_u" $((_ar_t + 40 * _ar_i)) 8)
        [ ${#_ar_name} -eq 16 ] || { _ar_err "$_ar_u: truncated section table"; return 1; }
        if [ "$_ar_name" = 2e6f7372656c0000 ]; then # ".osrel\0\0"
            [ -z "$_ar_at" ] || { _ar_err "$_ar_u has two .osrel sections"; return 1; }
            _ar_at=$((_ar_t + 40 * _ar_i))
        fi
        _ar_i=$((_ar_i + 1))
    done
    [ -n "$_ar_at" ] || { _ar_err "$_ar_u has no .osrel section"; return 1; }
    _ar_vsize=$(_ar_le "$_ar_u" $((_ar_at + 8)) 4) && _ar_raw=$(_ar_le "$_ar_u" $((_ar_at + 16)) 4) \
        && _ar_ptr=$(_ar_le "$_ar_u" $((_ar_at + 20)) 4) \
        || { _ar_err "$_ar_u: truncated section table"; return 1; }
    if [ "$_ar_vsize" -eq 0 ] || [ "$_ar_vsize" -gt "$BASTION_OSREL_MAX" ] \
        || [ "$_ar_vsize" -gt "$_ar_raw" ]; then
        _ar_err "$_ar_u: .osrel of $_ar_vsize bytes ($_ar_raw in the file, at most $BASTION_OSREL_MAX)"
        return 1
    fi
    _ar_got=$(dd if="$_ar_u" bs=1 skip="$_ar_ptr" count="$_ar_vsize" 2>/dev/null | wc -c)
    [ "$_ar_got" -eq "$_ar_vsize" ] || { _ar_err "$_ar_u: .osrel runs past the end of the file"; return 1; }
    dd if="$_ar_u" bs=1 skip="$_ar_ptr" count="$_ar_vsize" 2>/dev/null | tr -d '\000'
}

bastion_osrel_svn() { # reads .osrel on stdin: BASTION_SECURITY_VERSION (0 when absent)
    _ar_text=$(cat)
    _ar_k=$(printf '%s\n' "$_ar_text" | grep -c '^BASTION_SECURITY_VERSION=')
    [ "$_ar_k" -le 1 ] || { _ar_err ".osrel has BASTION_SECURITY_VERSION $_ar_k times"; return 1; }
    [ "$_ar_k" -eq 1 ] || { echo 0; return 0; }
    _ar_lines=$(printf '%s\n' "$_ar_text" | sed -n 's/^BASTION_SECURITY_VERSION=//p')
    _ar_s=$(printf '%s' "$_ar_lines" | sed 's/^"\(.*\)"$/\1/')
    case "$_ar_s" in
    "" | *[!0-9]* | ??????????*) # as bastion.device.boot.stub.security_version: 1 to 9 digits
        _ar_err ".osrel BASTION_SECURITY_VERSION=$_ar_lines is not a small integer"
        return 1
        ;;
    esac
    echo "$_ar_s" | sed 's/^0*\([0-9]\)/\1/' # no leading zeros (sh reads 010 as octal)
}

bastion_fuse_count() { # the TPM fuse counter (blown bits), "none" if never defined
    _ar_caps=$(_ar_tpm2 getcap handles-nv-index 2>&1) \
        || { _ar_err "listing the TPM NV indexes: $(echo "$_ar_caps" | tail -n1)"; return 1; }
    if ! echo "$_ar_caps" | grep -qiE "0x0*${BASTION_FUSE_INDEX#0x}( |\$)"; then
        echo none
        return 0
    fi
    _ar_tmp=$(mktemp -d) || { _ar_err "no temporary folder"; return 1; }
    if ! _ar_out=$(_ar_tpm2 nvread -Q -C o -s 8 -o "$_ar_tmp/bits" "$BASTION_FUSE_INDEX" 2>&1); then
        rm -rf "$_ar_tmp"
        _ar_err "reading the fuse counter: $(echo "$_ar_out" | tail -n1)"
        return 1
    fi
    # shellcheck disable=SC2046 # one word per byte
    set -- $(od -An -v -tu1 "$_ar_tmp/bits")
    rm -rf "$_ar_tmp"
    [ $# -eq 8 ] || { _ar_err "the fuse counter is $# bytes, expected 8"; return 1; }
    _ar_c=0
    for _ar_b in "$@"; do
        while [ "$_ar_b" -gt 0 ]; do
            _ar_c=$((_ar_c + (_ar_b & 1)))
            _ar_b=$((_ar_b >> 1))
        done
    done
    echo "$_ar_c"
}

bastion_antirollback_check() { # ESP_DIR: refuse unless the booted UKI's SVN >= fuses
    _ar_path=$(bastion_booted_uki) || return 1
    _ar_uki=$1$_ar_path
    _ar_osrel=$(bastion_uki_osrel "$_ar_uki") || return 1
    _ar_svn=$(printf '%s\n' "$_ar_osrel" | bastion_osrel_svn) || return 1
    _ar_fuses=$(bastion_fuse_count) || return 1
    echo "BASTION: slot ${_ar_uki##*/} svn $_ar_svn fuses $_ar_fuses"
    if [ "$_ar_fuses" != none ] && [ "$_ar_svn" -lt "$_ar_fuses" ]; then
        echo "rollback: ${_ar_uki##*/} has security version $_ar_svn, below the fuse counter $_ar_fuses" >&2
        return 1
    fi
}

_ar_main() { # the device: mount the ESP systemd-boot came from, read-only, and check
    if [ -n "${BASTION_ESP:-}" ]; then
        bastion_antirollback_check "$BASTION_ESP"
        return
    fi
    _ar_part=$(bastion_efivar LoaderDevicePartUUID | tr 'A-F' 'a-f')
    case "$_ar_part" in
    ????????-????-????-????-????????????) ;;
    *)
        _ar_err "no LoaderDevicePartUUID EFI variable naming the ESP"
        return 1
        ;;
    esac
    _ar_dev=/dev/disk/by-partuuid/$_ar_part
    _ar_w=0
    while [ ! -b "$_ar_dev" ] && [ "$_ar_w" -lt $((${BASTION_WAIT:-30} * 10)) ]; do
        sleep 0.1
        _ar_w=$((_ar_w + 1))
    done
    [ -b "$_ar_dev" ] || { _ar_err "the ESP $_ar_dev did not appear"; return 1; }
    _ar_mnt=/run/bastion-esp
    mkdir -p "$_ar_mnt" || return 1
    _ar_out=$(mount -t vfat -o ro,nodev,nosuid,noexec "$_ar_dev" "$_ar_mnt" 2>&1) \
        || { _ar_err "mounting the ESP $_ar_dev: $_ar_out"; return 1; }
    bastion_antirollback_check "$_ar_mnt"
    _ar_rc=$?
    umount "$_ar_mnt"
    return $_ar_rc
}

# run as a program (the device's unit); sourced (the test init), only define the functions
case "${0##*/}" in
antirollback.sh | bastion-antirollback) _ar_main || exit 1 ;;
esac
