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

# --- image build and the boot chain (build/efi_image.py, device/boot/) --------------------
IMAGE_INPUT_MAX_SIZE = 512 * MiB  # one file `image build` reads (kernel, initrd, module)
BOOT_STATEMENT_MAX_SIZE = 64 * KiB  # a signed statement (image, delegation)
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
INITRD_MAX_SIZE = 512 * MiB  # an initrd as the sim kernel unpacks it (decompressed)
KERNEL_MODULE_MAX_SIZE = 64 * MiB  # one kernel module as the sim loads it (decompressed)
BOOTLOG_MAX_SIZE = 64 * MiB  # a guest's serial console log read back by the runner
BOOTLOG_MAX_EVENTLOG_SIZE = 1 * MiB  # a TCG event log dumped in base64 over serial
BLS_MAX_NAME_SIZE = 200  # bytes of a BLS entry name (FAT long names hold 255 UTF-16 units)
BLS_MAX_COUNTER = 2**32 - 1  # boot counter tries left / done (systemd-boot: unsigned)
# --- the device plane (device/platform/) -------------------------------------------------
PLATFORM_EFI_VAR_MAX_SIZE = 64 * KiB  # one EFI variable read through a Platform (efivarfs file)
ESP_FILE_MAX_SIZE = 256 * MiB  # one file read from the ESP (a UKI with its initrd)
ESP_MAX_LISTING = 4096  # files in one ESP folder listed by the device plane
# --- device update install (device/update/, ADR 0030) --------------------------------------
UPDATE_RANGE_MAX_SIZE = 4 * MiB  # one HTTP Range request (or file read) while streaming
UPDATE_TREE_MAX_SIZE = 64 * MiB  # a bundle's verity tree, held in memory (~8 GiB payload)
UPDATE_IMAGE_MAX_SIZE = 64 * 1024 * MiB  # one image a bundle's signed manifest names
UPDATE_JOURNAL_MAX_SIZE = 64 * KiB  # the install progress journal read back after a cut
UPDATE_STATE_MAX_SIZE = 64 * KiB  # the slot records (update-slots.json)
UPDATE_HEALTH_MAX_CHECKS = 64  # checks in one health specification
UPDATE_HEALTH_MAX_SECONDS = 3600  # time limit of one check, and of all of them
UPDATE_VERSION_MAX_PARTS = 16  # dotted parts compared in a version string
KERNEL_TOOL_MAX_OUTPUT = 64 * KiB  # veritysetup/cryptsetup output parsed by storage/kernel_*.py
PLATFORM_SYSFS_MAX_SIZE = 4 * KiB  # one sysfs or procfs file read by the linux platform
PLATFORM_MAX_BLOCK_DEVICES = 1024  # entries of /sys/class/block the linux platform scans
BOOTLOG_MAX_QUOTE_SIZE = 2 * KiB  # a TPMS_ATTEST or TPMT_SIGNATURE printed in base64 over serial
# --- operator's console: account lifecycle, metrics (docs/adr/0020) ---------------------------
REAUTH_MAX_AGE_SECONDS = 10 * 60  # a session proves password (+2FA) this recently for changes
SESSIONS_LIST_MAX = 200  # sessions shown by GET /v1/me/sessions (newest first)
METRICS_TOKEN_MIN_LENGTH = 32  # characters of the bearer token that guards /metrics
METRICS_VERSIONS_MAX = 32  # OS versions labelled in bastion_devices_by_version (the rest: "other")
METRICS_LABEL_MAX_LENGTH = 64  # characters of a device-reported label value (an OS version)

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
ATTEST_OTHER_RELEASES = 64  # newest other releases a verdict checks for release.unexpected
ATTEST_NONCE_SIZE = 32  # bytes of a server attestation nonce
ATTEST_MEMO_MAX_ENTRIES = 1024  # results one verifier memo keeps (decoded logs, parsed logs)
ATTEST_MEMO_MAX_BYTES = 64 * MiB  # input bytes one verifier memo keeps before it starts over
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
# --- TUF release metadata (build/tuf_repo.py, device/update/tuf_client.py, ADR 0029) -----
TUF_ROOT_MAX_SIZE = 512 * KiB  # one root.json (python-tuf ngclient's default)
TUF_TIMESTAMP_MAX_SIZE = 16 * KiB  # one timestamp.json (ngclient's default)
TUF_SNAPSHOT_MAX_SIZE = 2 * MiB  # one snapshot.json when the timestamp gives no length
TUF_TARGETS_MAX_SIZE = 32 * MiB  # one targets or product role (10,000 releases: ~5 MiB)
TUF_MAX_ROOT_ROTATIONS = 64  # newer root versions a device walks in one refresh
TUF_MAX_DELEGATIONS = 64  # product roles a device reads in one refresh
TUF_CUSTOM_MAX_HARDWARE = 64  # hardware names one release lists
TUF_NAME_MAX_CHARS = 128  # a product, channel, hardware or version string

# --- the one HTTP client (io/http.py) ---------------------------------------------------
HTTP_MAX_RESPONSE = 16 * HTTP_MAX_BODY  # one answer read by a client (lists can be long)
HTTP_CLIENT_TIMEOUT_SECONDS = 30.0  # connect/read/write of one client request
# --- server message bus (server/bus.py) ---------------------------------------------------
BUS_CHANNEL_MAX_SIZE = 200  # bytes of a bus channel name
BUS_MESSAGE_MAX_SIZE = 8 * KiB  # bytes of one bus notice (NOTIFY allows 8000)
BUS_QUEUE_MAX = 1000  # notices queued for one subscriber before the oldest are dropped
# --- device agent and command channel (trust/httpsig.py, device/agent/, server/channel) ---
DEVICE_SIGNATURE_MAX_SKEW_SECONDS = 300  # |signature created - server clock| accepted
DEVICE_SIGNATURE_MAX_NONCE = 64  # characters of a request signature nonce
DEVICE_SIGNATURE_MAX_HEADER = 4 * KiB  # Signature-Input, Signature, Content-Digest each
DEVICE_SIGNATURE_MAX_TARGET = 2 * KiB  # path + query of a signed request
CHANNEL_MESSAGE_MAX_SIZE = 64 * KiB  # one JSON message on the command WebSocket
CHANNEL_POLL_SECONDS = 15.0  # a process re-checks its open channels' commands this often
CHANNEL_SWEEP_BATCH = 500  # device ids in one query of that re-check
CHANNEL_BATCH_SECONDS = 0.05  # a process gathers channel presence and first checks this long
CHANNEL_SEND_MAX = 32  # commands sent in one batch on the channel
COMMAND_TTL_DEFAULT_SECONDS = 3600  # a command not run within this expires
COMMAND_TTL_MAX_SECONDS = 7 * 24 * 3600  # the longest an operator may let one wait
COMMAND_ARGS_MAX_SIZE = 4 * KiB  # JSON arguments of one command
COMMAND_OUTPUT_MAX_SIZE = 16 * KiB  # output a device reports for one command
COMMANDS_LIST_MAX = 200  # commands in one list answer
AGENT_LOG_BUFFER_MAX_BYTES = 16 * MiB  # the agent's offline log buffer on the data volume
AGENT_LOG_SEGMENT_MAX_BYTES = 256 * KiB  # one buffer segment file (one upload at most)
AGENT_LOG_LINE_MAX = 8 * KiB  # one log line queued by the agent (longer lines are cut)
AGENT_LOG_MEMORY_MAX = 1024  # lines held in memory while the disk refuses writes
AGENT_SPOOL_FILE_MAX_SIZE = 4 * MiB  # one application spool file ingested at a time
AGENT_DONE_IDS_MAX = 256  # finished command ids the agent remembers (at-least-once)
AGENT_BACKOFF_MAX_SECONDS = 300.0  # the longest wait between reconnect attempts
AGENT_CONFIG_MAX_SIZE = 1 * MiB  # the config/env document the agent writes for apps
# --- several server processes, webhooks (docs/adr/0034-scale-and-webhooks.md) -------------
SHARED_COUNTER_KEY_MAX = 255  # characters of a shared rate-limit key (longer keys are hashed)
SHARED_COUNTER_SWEEP_EVERY = 1000  # hits of one process between sweeps of expired counters
WEBHOOKS_PER_FLEET = 16  # webhook endpoints one fleet may have
WEBHOOK_URL_MAX_LENGTH = 2048  # characters of one webhook URL
WEBHOOK_EVENT_MAX_SIZE = 16 * KiB  # bytes of one event body sent to an endpoint
WEBHOOK_MAX_ATTEMPTS = 8  # deliveries are retried with backoff up to this many attempts
WEBHOOK_TIMEOUT_SECONDS = 10.0  # one POST to an endpoint
WEBHOOK_RESPONSE_MAX_SIZE = 4 * KiB  # bytes of an endpoint's answer kept in the delivery log
WEBHOOK_DELIVERIES_PAGE_MAX = 500  # deliveries in one page of the delivery log
# --- the web dashboard (server/ui/, ADR 0035) ---------------------------------------------
UI_SIGNIN_FORM_TTL_SECONDS = 600  # lifetime of the sign-in form's double-submit CSRF cookie
UI_FORM_FIELD_MAX_LENGTH = 1024  # characters of one dashboard form field (e-mail, code, name)
UI_RECORDS_SHOWN = 100  # newest log lines, and newest events, on a device page
UI_VERDICTS_SHOWN = 20  # newest attestation verdicts on a device page
UI_SLOT_SCAN = 200  # newest events searched for the device's reported boot slot
UI_AUDIT_PAGE = 100  # audit entries on one page of the audit log
UI_COMMANDS_SHOWN = 50  # newest commands (with their results) on a device page
UI_EVENTLOG_SHOWN = 1000  # events of the newest verdict's TCG event log on a device page
# --- signed device update reports, releases, rollouts (docs/adr/0031-rollouts.md) -----------
UPDATE_REPORT_MAX_SIZE = 4 * KiB  # one signed update report (canonical JSON, base64 inside)
UPDATE_REPORT_REASON_MAX = 1024  # characters of the reason a device gives in a report
UPDATE_REPORT_NONCE_SIZE = 32  # bytes of a server update-report nonce
UPDATE_REPORT_OPEN_NONCES = 4  # open report nonces one device may hold at once
UPDATE_REPORT_NONCE_TTL_SECONDS = 600  # a report nonce expires this long after it was issued
RELEASE_VERSION_MAX_LENGTH = 128  # characters of a release version (manifest [update] version)
RELEASE_BUNDLE_MAX_SIZE = 8 * GiB  # one bundle uploaded into the server's file store
RELEASE_COMPATIBLE_MAX_LENGTH = 256  # characters of a release's RAUC compatible string
RELEASE_URL_MAX_LENGTH = 2048  # characters of an external bundle URL
RELEASE_KEYRING_MAX_SIZE = 256 * KiB  # PEM certificates of one fleet's release keyring
ROLLOUT_MAX_WAVES = 16  # waves in one rollout
ROLLOUT_WAVE_NAME_MAX_LENGTH = 64  # characters of a wave's name
ROLLOUT_WAVE_MAX_DEVICES = 10_000  # device ids named in one wave's device list
DEVICE_TAGS_MAX = 32  # tags on one device
DEVICE_TAG_MAX_LENGTH = 64  # characters of one device tag
TUF_FILE_MAX_SIZE = 64 * MiB  # one file served from the TUF repository folder
