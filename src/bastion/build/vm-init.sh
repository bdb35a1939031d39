#!/bin/sh
# bastion's test initramfs /init (busybox ash). Shipped as package data and packed by
# bastion.build.initrd; see docs/vm.md. It proves one thing on a real kernel: the root
# named by roothash= is found by its Discoverable Partitions Specification type and
# PARTUUID, opened with dm-verity, read in full, and mounted read-only.
# Every line for the runner starts with "BASTION: " (see bastion.formats.bootlog):
#   BASTION: running                 the verity root is mounted read-only and verified
#   BASTION: data unlocked <dev>     the LUKS2 data partition opened by its TPM token
#   BASTION: failed: <reason>        anything else, one line
#   BASTION: eventlog begin|end      the TCG event log, base64, between the two
#   BASTION: pcr sha256 <n> <hex>    PCR values as the kernel reads them
#   BASTION: efivar <name> <value>   SecureBoot (0/1) and the boot loader's variables
#   BASTION: verity options <opts>   the corruption response from systemd.verity_root_options=
#   BASTION: quote attest|signature <base64>   a TPM2_Quote of PCRs 4,7,9,11 (see below)
#   BASTION: warning: <what>         something an audit-mode profile let through
#   BASTION: slot <file> svn <n> fuses <m>|none   the booted entry's security version and
#                                    the TPM NV fuse counter; n < m fails (anti-rollback)
#   BASTION: health <path> exit <n>: <last line>   each of the root's health.d checks
#   BASTION: poweroff                the last line before the power-off
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DM_DISABLE_UDEV=1
# bastion_verity_open, bastion_crypt_open_token: the argv of bastion.storage.kernel_*
. /etc/bastion/storage.sh

ROOT_TYPE=4f68bce3-e8cd-4db1-96e7-fbcaf984b709     # DPS: root, x86-64
VERITY_TYPE=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5   # DPS: root verity, x86-64
DATA_TYPE=0fc63daf-8483-4772-8e79-3d69d8477de4     # Linux data: the LUKS2 data volume
ESP_TYPE=c12a7328-f81f-11d2-ba4b-00a0c93ec93b      # EFI System Partition
HEALTH_DIR=/usr/libexec/bastion/health.d   # in the root: one check per file (sh)
DISK=/dev/vda

say() { echo "BASTION: $*"; }
finish() {
    sync
    say "poweroff"
    poweroff -f
    sleep 10
    echo o > /proc/sysrq-trigger
}
fail() { say "failed: $*"; finish; exit 1; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo /sbin/modprobe > /proc/sys/kernel/modprobe
say "initrd uptime=$(cut -d' ' -f1 /proc/uptime)"

# --- measured boot: what the firmware and the stubs logged, and the PCRs ------------------
EVENTLOG=/sys/kernel/security/tpm0/binary_bios_measurements
if [ -r "$EVENTLOG" ]; then
    say "eventlog begin"
    base64 "$EVENTLOG"
    say "eventlog end"
fi
for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
    f=/sys/class/tpm/tpm0/pcr-sha256/$n
    [ -r "$f" ] && say "pcr sha256 $n $(cat "$f")"
done

# --- firmware and boot loader state: Secure Boot, the BLS entry systemd-boot chose -------
EFIVARS=/sys/firmware/efi/efivars
modprobe efivarfs 2>/dev/null
mount -t efivarfs efivarfs "$EFIVARS" 2>/dev/null
f=$EFIVARS/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
[ -r "$f" ] && say "efivar SecureBoot $(tail -c +5 "$f" | od -An -tu1 -N1 | tr -d ' ')"
ENTRY_SELECTED=
BOOT_COUNT_PATH=
for v in LoaderEntrySelected LoaderBootCountPath LoaderInfo StubInfo; do
    f=$EFIVARS/$v-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
    # UTF-16LE after the 4 attribute bytes; these values are ASCII
    [ -r "$f" ] || continue
    value=$(tail -c +5 "$f" | tr -d '\000')
    say "efivar $v $value"
    case "$v" in
    LoaderEntrySelected) ENTRY_SELECTED=$value ;;
    LoaderBootCountPath) BOOT_COUNT_PATH=$value ;;
    esac
done

# --- the root hash from the (signed, measured) kernel command line ------------------------
ROOTHASH=
VERITY_OPTS=
for word in $(cat /proc/cmdline); do
    case "$word" in
    roothash=*) ROOTHASH=${word#roothash=} ;;
    systemd.verity_root_options=*) VERITY_OPTS=${word#systemd.verity_root_options=} ;;
    esac
done
[ -n "$ROOTHASH" ] || fail "no roothash= on the kernel command line"
echo "$ROOTHASH" | grep -qE '^[0-9a-f]{64}$' || fail "roothash= is not 64 lowercase hex digits"
# DPS: root PARTUUID = first 128 bits of the root hash, verity PARTUUID = last 128 bits
uuid_of() { echo "${1:0:8}-${1:8:4}-${1:12:4}-${1:16:4}-${1:20:12}"; }
ROOT_UUID=$(uuid_of "${ROOTHASH:0:32}")
VERITY_UUID=$(uuid_of "${ROOTHASH:32:32}")

for m in virtio_pci virtio_blk dm_mod dm_verity erofs; do
    modprobe "$m" 2>/tmp/err || fail "modprobe $m: $(tail -n1 /tmp/err)"
done
i=0
while [ ! -b "$DISK" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b "$DISK" ] || fail "no disk $DISK"

# --- find the partitions in the GPT: type GUID and PARTUUID, mixed-endian on disk ---------
hexat() { od -An -v -tx1 -j "$1" -N "$2" "$DISK" | tr -d ' \n'; }
numat() { od -An -tu"$2" -j "$1" -N "$2" "$DISK" | tr -d ' \n'; }
guid() { # 32 hex digits as stored -> canonical lowercase GUID
    h=$1
    echo "${h:6:2}${h:4:2}${h:2:2}${h:0:2}-${h:10:2}${h:8:2}-${h:14:2}${h:12:2}-${h:16:4}-${h:20:12}"
}
[ "$(hexat 512 8)" = "4546492050415254" ] || fail "no GPT header on $DISK"
ENTRIES_LBA=$(numat 584 8)
ENTRY_COUNT=$(numat 592 4)
ENTRY_SIZE=$(numat 596 4)
[ "$ENTRY_COUNT" -le 256 ] && [ "$ENTRY_SIZE" -ge 128 ] && [ "$ENTRY_SIZE" -le 512 ] \
    || fail "GPT entry array of $ENTRY_COUNT x $ENTRY_SIZE bytes"
ARRAY=$(hexat $((ENTRIES_LBA * 512)) $((ENTRY_COUNT * ENTRY_SIZE)))
ROOT_DEV=
VERITY_DEV=
DATA_DEV=
ESP_DEV=
i=0
while [ $i -lt "$ENTRY_COUNT" ]; do
    e=${ARRAY:$((i * ENTRY_SIZE * 2)):64}
    t=$(guid "${e:0:32}")
    p=$(guid "${e:32:32}")
    n=$((i + 1))
    if [ "$t" = "$ROOT_TYPE" ] && [ "$p" = "$ROOT_UUID" ]; then
        [ -z "$ROOT_DEV" ] || fail "two root partitions with PARTUUID $ROOT_UUID"
        ROOT_DEV=$DISK$n
    fi
    if [ "$t" = "$VERITY_TYPE" ] && [ "$p" = "$VERITY_UUID" ]; then
        [ -z "$VERITY_DEV" ] || fail "two verity partitions with PARTUUID $VERITY_UUID"
        VERITY_DEV=$DISK$n
    fi
    [ "$t" = "$ESP_TYPE" ] && ESP_DEV=$DISK$n
    if [ "$t" = "$DATA_TYPE" ]; then
        [ -z "$DATA_DEV" ] || fail "two data partitions"
        DATA_DEV=$DISK$n
    fi
    i=$((i + 1))
done
[ -n "$ROOT_DEV" ] || fail "no root partition (type $ROOT_TYPE, PARTUUID $ROOT_UUID)"
[ -n "$VERITY_DEV" ] || fail "no verity partition (type $VERITY_TYPE, PARTUUID $VERITY_UUID)"
say "root $ROOT_DEV verity $VERITY_DEV"

# --- anti-rollback: the booted UKI's security version against the TPM fuse counter -------
# The script a device's bastion-antirollback.service runs (bastion.build.device_initrd):
# BASTION_SECURITY_VERSION in the .osrel of the UKI systemd-boot loaded (the file
# LoaderBootCountPath or LoaderEntrySelected names) against the TPM NV fuse bits.
. /etc/bastion/antirollback.sh
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
if [ -n "$ENTRY_SELECTED$BOOT_COUNT_PATH" ] && [ -n "$ESP_DEV" ]; then
    for m in nls_cp437 nls_ascii nls_utf8 vfat; do
        modprobe "$m" 2>/tmp/err || fail "modprobe $m: $(tail -n1 /tmp/err)"
    done
    mkdir -p /run/esp
    mount -t vfat -o ro "$ESP_DEV" /run/esp 2>/tmp/err || fail "mount ESP: $(tail -n1 /tmp/err)"
    BASTION_EFIVARS=$EFIVARS bastion_antirollback_check /run/esp 2>/tmp/err \
        || fail "$(tail -n1 /tmp/err)"
    umount /run/esp
fi

# --- dm-verity: open, then read every block (open alone accepts a wrong root hash) --------
# the corruption response (ADR 0028): eio (default), ignore, restart or panic
say "verity options ${VERITY_OPTS:-eio}"
bastion_verity_open "$ROOT_DEV" "$VERITY_DEV" "$ROOTHASH" "$VERITY_OPTS" 2>/tmp/err \
    || fail "veritysetup open: $(tail -n1 /tmp/err)"
if ! dd if=/dev/mapper/root of=/dev/null bs=1M 2>/tmp/err; then
    why=$(dmesg | grep -m1 -E 'verity.*(corrupted|failed)')
    fail "verity: reading the root failed: ${why:-$(tail -n1 /tmp/err)}"
fi
if ! veritysetup status root 2>/tmp/err | grep -qE 'status: +verified'; then
    st=$(veritysetup status root 2>&1 | grep status:)
    [ "$VERITY_OPTS" = ignore-corruption ] || fail "verity: status is not verified: $st"
    say "warning: verity: corrupted blocks ignored (audit): $st"
fi
mkdir -p /sysroot
mount -t erofs -o ro /dev/mapper/root /sysroot 2>/tmp/err || fail "mount root: $(tail -n1 /tmp/err)"
OPTS=$(awk '$2 == "/sysroot" { print $4 }' /proc/mounts)
case ",$OPTS," in
*,ro,*) ;;
*) fail "root mounted with options $OPTS (not read-only)" ;;
esac
say "root mounted /dev/mapper/root /sysroot erofs $OPTS"
find /sysroot -type f -exec cat {} + > /dev/null 2>/tmp/err || fail "reading root files: $(tail -n1 /tmp/err)"

# --- a quote for the host's verifier: the AK a device keeps, the nonce from QEMU fw_cfg ---
# Before enter-initrd is measured, so the TCG event log replays to the quoted PCR 11.
AK=/sysroot/etc/bastion
NONCE_FILE=/sys/firmware/qemu_fw_cfg/by_name/opt/bastion/nonce/raw
modprobe qemu_fw_cfg 2>/dev/null
if [ -r "$AK/ak.pub" ] && [ -r "$NONCE_FILE" ]; then
    NONCE=$(cat "$NONCE_FILE")
    echo "$NONCE" | grep -qE '^[0-9a-f]{2,128}$' || fail "quote: the nonce is not hex"
    export TPM2TOOLS_TCTI=device:/dev/tpmrm0
    # the storage primary (tpm2-tools' default ECC template is bastion's SRK template)
    tpm2 createprimary -Q -C o -G ecc256:aes128cfb -c /tmp/srk.ctx 2>/tmp/err \
        || fail "quote: storage primary: $(tail -n1 /tmp/err)"
    tpm2 load -Q -C /tmp/srk.ctx -u "$AK/ak.pub" -r "$AK/ak.priv" -c /tmp/ak.ctx 2>/tmp/err \
        || fail "quote: loading the AK: $(tail -n1 /tmp/err)"
    tpm2 quote -Q -c /tmp/ak.ctx -l sha256:4,7,9,11 -q "$NONCE" -g sha256 \
        -m /tmp/quote.msg -s /tmp/quote.sig 2>/tmp/err || fail "quote: $(tail -n1 /tmp/err)"
    say "quote attest $(base64 /tmp/quote.msg | tr -d '\n')"
    say "quote signature $(base64 /tmp/quote.sig | tr -d '\n')"
fi

# --- the data volume: LUKS2 with a systemd-tpm2 token bound to a signed PCR 11 policy ------
if [ -n "$DATA_DEV" ]; then
    # what systemd-pcrphase-initrd.service does: the "enter-initrd" phase into PCR 11
    export TPM2TOOLS_TCTI=device:/dev/tpmrm0
    tpm2 pcrextend "11:sha256=$(printf enter-initrd | sha256sum | cut -d' ' -f1)" 2>/tmp/err \
        || fail "data: measuring enter-initrd into PCR 11: $(tail -n1 /tmp/err)"
    say "pcr11 phase enter-initrd $(cat /sys/class/tpm/tpm0/pcr-sha256/11 2>/dev/null)"
    # systemd-stub put the UKI's .pcrsig in /.extra; the token plugin reads it from /run
    SIG=/.extra/tpm2-pcr-signature.json
    [ -r "$SIG" ] || fail "data: the UKI carries no .pcrsig ($SIG missing)"
    mkdir -p /run/systemd /run/cryptsetup
    cp "$SIG" /run/systemd/tpm2-pcr-signature.json
    modprobe dm_crypt 2>/tmp/err || fail "modprobe dm_crypt: $(tail -n1 /tmp/err)"
    if bastion_crypt_open_token "$DATA_DEV" 2>/tmp/err; then
        [ -b /dev/mapper/data ] || fail "data: opened but /dev/mapper/data is missing"
        say "data unlocked $DATA_DEV"
    else
        cryptsetup open --token-only --debug "$DATA_DEV" data 2>&1 \
            | grep -iE 'tpm2|policy|signature' | tail -n 5 | sed 's/^/data: /'
        fail "data: TPM unlock refused: $(grep -v '^$' /tmp/err | tail -n1)"
    fi
fi
# --- health checks the root carries (the update's trial boot; the host decides) ----------
if [ -d "/sysroot$HEALTH_DIR" ]; then
    for check in "/sysroot$HEALTH_DIR"/*; do
        [ -f "$check" ] || continue
        out=$(ROOT=/sysroot timeout 30 sh "$check" 2>&1)   # 143: killed at the limit
        code=$?
        say "health ${check#/sysroot} exit $code: $(echo "$out" | tail -n1 | cut -c1-200)"
    done
fi
say "running"
finish
