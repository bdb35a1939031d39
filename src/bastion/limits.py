"""Every bound bastion places on untrusted input, in one place.

Parsers compare sizes and counts read from bytes they did not produce against these
names and raise :class:`bastion.errors.LimitError` when exceeded. Keep one constant per
bound, named for what it bounds, with its unit and, where it comes from a standard or a
reference tool, where from.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- dm-verity (cryptsetup lib/verity) ---------------------------------------------------
VERITY_MIN_BLOCK_SIZE = 512
VERITY_MAX_BLOCK_SIZE = 64 * KiB  # bastion's bound; the kernel takes up to the page size
VERITY_MAX_SALT_SIZE = 256  # superblock field is 256 bytes
VERITY_MAX_DATA_BLOCKS = 1 << 40  # 4 PiB at 4 KiB blocks
VERITY_MAX_LEVELS = 63
VERITY_MAX_TREE_SIZE = 1 * GiB  # hash tree held in memory by a full verification

# --- LUKS2 (on-disk format spec v1.1.4; cryptsetup luks2.h) ------------------------------
LUKS2_HDR_SIZES = (
    16 * KiB,
    32 * KiB,
    64 * KiB,
    128 * KiB,
    256 * KiB,
    512 * KiB,
    1 * MiB,
    2 * MiB,
    4 * MiB,
)
LUKS2_MAX_KEYSLOTS = 32
LUKS2_MAX_TOKENS = 32
LUKS2_MAX_SEGMENTS = 32
LUKS2_MAX_DIGESTS = 32
LUKS2_MAX_KEYSLOTS_SIZE = 128 * MiB
LUKS2_MAX_KEY_SIZE = 512  # bytes of volume key
LUKS2_MAX_PBKDF2_ITERATIONS = 2**31 - 1  # json int32 in cryptsetup
LUKS2_MAX_ARGON2_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
LUKS2_MAX_ARGON2_TIME = 2**31 - 1
LUKS2_MAX_ARGON2_PARALLEL = 4
LUKS2_AF_STRIPES = 4000  # the only value cryptsetup accepts

# --- TPM 2.0 marshalled structures ------------------------------------------------------
TPM2B_MAX_SIZE = 4096  # any TPM2B read from the wire; real TPM buffers are smaller
TPM_MAX_PCR_SELECTIONS = 16  # banks in one TPML_PCR_SELECTION
TPM_MAX_PCR_SELECT_BYTES = 4
TPM_MAX_DIGESTS = 16  # entries in TPML_DIGEST(_VALUES)
TPM_MAX_RSA_BITS = 4096
TPM_MAX_NV_SIZE = 2048
TPM_MAX_DIGEST_SIZE = 64  # TPMU_HA: the largest digest (sha512)
TPM_MAX_DATA_SIZE = 66  # TPM2B_DATA buffer is sizeof(TPMT_HA) (extraData, qualifying data)
TPM_MAX_NAME_SIZE = 66  # TPM2B_NAME: nameAlg + largest digest
TPM_MAX_ECC_PARAM_SIZE = 66  # TPM2B_ECC_PARAMETER for the largest supported curve (P-521)
TPM_MAX_SENSITIVE_SIZE = 1024  # TPMU_SENSITIVE_COMPOSITE: RSA prime, ECC scalar, sealed data
TPM_MAX_SEALED_SIZE = 128  # MAX_SYM_DATA: the most TPM2_Create will seal
TPM_MAX_CREDENTIAL_SIZE = 64  # TPM2B_DIGEST credential of MakeCredential
TPM_MAX_NONCE_SIZE = 64  # qualifying data bastion passes to Quote/Certify
TPM_MAX_RANDOM_SIZE = 4096  # bytes one get_random call returns
TPM_MAX_PCRS_FILE_CHUNKS = 32  # TPML_DIGEST lists in a tpm2-tools PCR file (tpm2_pcrs)
SOFTWARE_TPM_STATE_MAX_SIZE = 4 * MiB  # the software TPM's state file
TPM_MAX_AUTH_VALUE = 32  # an object's authValue is at most its nameAlg digest (SHA-256)
FUSE_FILE_SIZE = 48  # the software fuse bank file (bastion.tpm.fuses), exact size

# --- TCG event log ----------------------------------------------------------------------
EVENTLOG_MAX_SIZE = 16 * MiB
EVENTLOG_MAX_EVENTS = 100_000
EVENTLOG_MAX_EVENT_DATA = 1 * MiB
EVENTLOG_MAX_ALGORITHMS = 8

# --- GPT / disk images ------------------------------------------------------------------
GPT_MAX_PARTITION_ENTRIES = 65536  # sfdisk table-length; its own bound is only u32
GPT_ENTRY_SIZE_MAX = 1024
GPT_MAX_ENTRY_ARRAY_SIZE = 8 * MiB  # bytes of one entry array (65536 x 128)

# --- signed envelopes, keys, certificates -------------------------------------------------
ENVELOPE_MAX_SIZE = 16 * MiB
ENVELOPE_MAX_SIGNATURES = 64
KEY_FILE_MAX_SIZE = 64 * KiB
CERT_MAX_SIZE = 64 * KiB
CERT_CHAIN_MAX_DEPTH = 8
MODSIG_MAX_SIG_SIZE = 64 * KiB

# --- JSON documents read from disk or the network --------------------------------------
JSON_MAX_SIZE = 4 * MiB
JSON_MAX_DEPTH = 32

# --- fleet server -----------------------------------------------------------------------
HTTP_MAX_BODY = 1 * MiB
HTTP_MAX_LOG_LINES = 1000
NAME_MAX_LENGTH = 128
RATE_LIMIT_MAX_KEYS = 100_000  # principals/addresses tracked by the in-memory rate limiter
PASSWORD_MAX_LENGTH = 1024  # characters; argon2 of a longer input is a denial of service
PASSWORD_MIN_LENGTH = 10
TOKEN_MAX_LENGTH = 128  # characters of a bearer token in an Authorization header
API_LIST_MAX = 500  # rows in one list response
FLEET_CONFIG_MAX_SIZE = 64 * KiB  # canonical JSON bytes of one fleet's configuration
ENV_VALUE_MAX_LENGTH = 8 * KiB  # characters of one environment variable value
ENV_MAX_VARS = 1000  # environment variables in one fleet
TOKEN_MAX_SCOPES = 8

# --- enrolment and devices (docs/adr/0008-provisioning.md) ------------------------------
ENROLL_SECRET_SIZE = 32  # credential secret: one SHA-256 digest (TPM2B_DIGEST of nameAlg)
ENROLL_MAX_SEALED_KEY = 256  # sealed device API key blob
ENROLL_MAX_CSR_SIZE = 8 * KiB  # PEM CSR in /v1/enroll/begin
ENROLL_MAX_TPM_PUBLIC_B64 = 2 * KiB  # base64 TPM2B_PUBLIC (RSA-2048 EK is ~360 bytes)
ENROLL_MAX_ATTEST_B64 = 2 * KiB  # base64 TPMS_ATTEST / TPMT_SIGNATURE
ENROLL_MAX_SERIAL_LENGTH = 128
PROVISIONING_KEY_MAX_ALLOWLIST = 10_000  # serials + EK hashes on one provisioning key
PROVISIONING_KEY_MAX_TTL_SECONDS = 30 * 24 * 3600
PROVISIONING_KEY_MAX_USES = 1_000_000
DEVICE_MAX_ENV_VARS = 1000  # device env overrides
DEVICE_MAX_ENV_VALUE = 16 * KiB
DEVICE_MAX_EVENTS_PER_POST = 1000
DEVICE_MAX_FIELD_LENGTH = 256  # os_version, agent_version, note

# --- boot chain (issue 6: formats/bootunit.py, device/boot.py) ----------------------------
BOOT_CONTAINER_MAX_SIZE = 512 * MiB  # a boot archive / boot unit (kernel + initrd + modules)
BOOT_CONTAINER_MAX_ENTRIES = 4096  # named entries in one container (modules included)
BOOT_STATEMENT_MAX_SIZE = 64 * KiB  # a signed statement about a loader, unit or image
VERITY_SIG_MAX_SIZE = 64 * KiB  # DPS root-verity-sig partition JSON
PROFILE_MAX_SIZE = 64 * KiB  # signed security profile envelope
PROFILE_MAX_SERIAL = 64  # profile versions: one bit each in a 64-bit TPM NV bits index

# --- audit log keys and checkpoints; device log/event quotas (hardening: audit and logs) ---
AUDIT_HMAC_KEY_MIN_SIZE = 32  # bytes of an audit HMAC key
AUDIT_MAC_MAX_LENGTH = 2048  # base64 characters of one stored MAC or signature (RSA-4096: 684)
AUDIT_CHECKPOINT_MAX_SIZE = 16 * KiB  # an audit checkpoint file
DEVICE_RECORDS_MAX_COUNT = 10_000  # default per-device quota of log lines, and of events
DEVICE_RECORDS_MAX_BYTES = 16 * MiB  # default per-device quota of log bytes, and of event bytes
DEVICE_RECORDS_MAX_AGE_SECONDS = 30 * 86400  # default retention of device logs and events
DEVICE_RECORD_MAX_SIZE = 16 * KiB  # one log line or one event's JSON (bytes)
DEVICE_RECORDS_PAGE_MAX = 1000  # records in one page of GET .../logs or .../events
LOGIN_DELAY_MAX_SECONDS = 10.0  # longest a login to an account under guessing is slowed
INVITATION_TTL_DAYS_MAX = 30  # organisation invitations expire at the latest after this
INVITATIONS_MAX_PENDING = 500  # open invitations one organisation may have at a time
# --- PE/COFF images, Authenticode, UKIs (formats/pe.py, trust/authenticode.py) -----------
PE_MAX_IMAGE_SIZE = 1 * GiB  # a whole UKI (kernel + initrd) held in memory
PE_MAX_SECTIONS = 96  # the Windows loader's bound; COFF allows 65535
PE_MAX_DATA_DIRECTORIES = 16  # IMAGE_NUMBEROF_DIRECTORY_ENTRIES
PE_MAX_CERT_TABLE_SIZE = 1 * MiB  # the whole WIN_CERTIFICATE table
PE_MAX_CERTIFICATES = 16  # WIN_CERTIFICATE entries (signatures) in one image
AUTHENTICODE_MAX_CERTS = 16  # certificates carried inside one SignedData
PCRSIG_MAX_SIZE = 64 * KiB  # the .pcrsig JSON of a UKI
PCRSIG_MAX_ENTRIES = 64  # signed phase paths in one .pcrsig
# --- enrolment hardening: EK certificates, EK CA trust stores (docs/provisioning.md) ----------
EK_CA_MAX_PER_FLEET = 64  # TPM manufacturer CA certificates one fleet trusts
ENROLL_MAX_EK_CERT_B64 = 8 * KiB  # base64 DER EK certificate in /v1/enroll/begin (~1-2 KiB real)
EK_CA_MAX_PEM = 16 * KiB  # one CA certificate uploaded to a fleet's trust store
# --- signed PCR policies (storage/signed_policy.py) ---------------------------------------
TPM2_PUBKEY_MAX_SIZE = 16 * KiB  # the PEM public key of a systemd-tpm2 token (tpm2_pubkey)
# --- OpenID Connect sign-in (server/oidc/, docs/server.md) -----------------------------------
OIDC_DOCUMENT_MAX_SIZE = 256 * KiB  # a provider's discovery document, JWKS or token answer
OIDC_JWKS_MAX_KEYS = 64  # keys in a provider's JWKS
OIDC_PARAM_MAX_LENGTH = 2048  # a code, state, ticket or cookie value handed back to us
OIDC_LOGIN_TTL_SECONDS = 600  # a started sign-in (state, nonce, PKCE verifier) lives this long
OIDC_TICKET_TTL_SECONDS = 300  # the second-factor ticket after a good OIDC sign-in
OIDC_HTTP_TIMEOUT_SECONDS = 10.0  # one request to the provider
OIDC_METADATA_CACHE_SECONDS = 3600  # discovery document and JWKS are fetched again after this
# --- initramfs cpio, serial console of a VM boot (formats/cpio.py, formats/bootlog.py) ---
CPIO_MAX_ENTRIES = 100_000  # members of one newc archive
CPIO_MAX_NAME_SIZE = 4096  # bytes of one member name with its NUL (PATH_MAX)
BOOTLOG_MAX_SIZE = 64 * MiB  # a guest's serial console log read back by the runner
BOOTLOG_MAX_EVENTLOG_SIZE = 1 * MiB  # a TCG event log dumped in base64 over serial
BLS_MAX_NAME_SIZE = 200  # bytes of a BLS entry name (FAT long names hold 255 UTF-16 units)
BLS_MAX_COUNTER = 2**32 - 1  # boot counter tries left / done (systemd-boot: unsigned)
# --- the device plane (device/platform/) -------------------------------------------------
PLATFORM_EFI_VAR_MAX_SIZE = 64 * KiB  # one EFI variable read through a Platform (efivarfs file)
# --- operator's console: account lifecycle, metrics (docs/adr/0020) ---------------------------
REAUTH_MAX_AGE_SECONDS = 10 * 60  # a session proves password (+2FA) this recently for changes
SESSIONS_LIST_MAX = 200  # sessions shown by GET /v1/me/sessions (newest first)
METRICS_TOKEN_MIN_LENGTH = 32  # characters of the bearer token that guards /metrics

# --- UEFI Secure Boot variables (formats/efivars.py, docs/adr/0017-secureboot.md) --------
EFI_VARIABLE_MAX_SIZE = 1 * MiB  # one variable's data or one .auth file (dbx today is ~30 KiB)
EFI_SIGLIST_MAX_LISTS = 256  # EFI_SIGNATURE_LISTs in one variable
EFI_SIGLIST_MAX_ENTRIES = 16_384  # EFI_SIGNATURE_DATA entries in one variable (all lists)
EFI_SIGNATURE_MAX_SIZE = 64 * KiB  # one EFI_SIGNATURE_DATA (owner GUID + certificate DER)
EFI_AUTH_CERT_MAX_SIZE = 64 * KiB  # the PKCS#7 SignedData in an EFI_VARIABLE_AUTHENTICATION_2
EFI_AUTH_MAX_CERTIFICATES = 8  # certificates carried in that SignedData
EFI_VARIABLE_NAME_MAX_CHARS = 128  # UTF-16 code units of a variable name
OVMF_VARS_MAX_SIZE = 16 * MiB  # a raw edk2 variable store (OVMF_VARS_4M.fd is 528 KiB)
# --- remote attestation (trust/verdict.py, server/attestation) -------------------------------
ATTEST_EVIDENCE_MAX_SIZE = 2 * MiB  # one evidence JSON document (event log in base64)
ATTEST_EVENTLOG_MAX_SIZE = 1 * MiB  # the event log inside evidence (a firmware log: ~50 KiB)
ATTEST_TPM_OBJECT_MAX_SIZE = 2 * KiB  # TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC in evidence
ATTEST_POSTURE_MAX_KEYS = 64  # facts in one posture report
ATTEST_POSTURE_MAX_STRING = 4 * KiB  # one posture string (the kernel command line)
ATTEST_POSTURE_MAX_LIST = 1024  # listening ports in a posture, entries of a port allow-list
ATTEST_GOLDEN_MAX_SIZE = 64 * KiB  # one signed golden-values statement
ATTEST_GOLDEN_MAX_ENTRIES = 64  # PCRs or components in one golden-values statement
ATTEST_GOLDEN_PER_FLEET = 16  # golden statements (accepted releases) one fleet keeps
ATTEST_NONCE_SIZE = 32  # bytes of a server attestation nonce
# --- posture collection from /proc and /sys (formats/kernelstate.py, device/posture.py) ------
POSTURE_FILE_MAX_SIZE = 64 * KiB  # one small procfs/sysfs/efivarfs file read for posture
POSTURE_TABLE_MAX_SIZE = 16 * MiB  # one /proc/net/{tcp,udp}[6] table or /proc/self/mountinfo
POSTURE_TABLE_MAX_ROWS = 65_536  # sockets in one /proc/net table, mounts in mountinfo
POSTURE_DM_DEVICES_MAX = 1024  # /sys/block/dm-* entries looked at for the root's mapping
# --- RAUC-compatible update bundles (formats/raucm.py, formats/bundle.py, ADR 0026) ------
BUNDLE_SIGNATURE_MAX_SIZE = 64 * KiB  # the trailing CMS (RAUC 1.8 refuses more than 0x10000)
BUNDLE_BLOCK_SIZE = 4096  # squashfs padding, dm-verity data and hash block size
BUNDLE_MANIFEST_MAX_SIZE = 64 * KiB  # one manifest.raucm (inline in the CMS for verity)
BUNDLE_MANIFEST_MAX_IMAGES = 32  # [image.*] sections in one manifest
BUNDLE_MANIFEST_MAX_VALUE = 4 * KiB  # one manifest value
BUNDLE_MAX_CERTIFICATES = 8  # certificates carried in a bundle's CMS

# --- the one HTTP client (io/http.py) ---------------------------------------------------
HTTP_MAX_RESPONSE = 16 * HTTP_MAX_BODY  # one answer read by a client (lists can be long)
HTTP_CLIENT_TIMEOUT_SECONDS = 30.0  # connect/read/write of one client request
