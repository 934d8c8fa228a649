/* oae wire format v1: encode/decode/validate of 64-byte records and 78-byte frames.
 * Normative description: docs/protocol.md.  No allocation, no I/O, no globals written. */
#ifndef OAE_WIRE_H
#define OAE_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define OAE_VERSION 1
#define OAE_RECORD_LEN 64
#define OAE_FRAME_LEN 78
#define OAE_ETH_HLEN 14
#define OAE_PAYLOAD_MAX 16
#define OAE_KEY_LEN 16
#define OAE_ETHERTYPE_DEFAULT 0x88B5

/* opcodes */
enum { OAE_OP_HELLO = 1, OAE_OP_TOKEN = 2, OAE_OP_RECONCILE = 3, OAE_OP_BYE = 4 };
/* link phase */
enum { OAE_PHASE_DISCOVER = 1, OAE_PHASE_RECONCILE = 2, OAE_PHASE_LIVE = 3 };
/* AIT transfer state */
enum {
    OAE_ST_IDLE = 0, OAE_ST_TENTATIVE = 1, OAE_ST_REFLECTING = 2,
    OAE_ST_COMMITTED = 3, OAE_ST_ABORTED = 4, OAE_ST_INDEFINITE = 5
};
/* transitions */
enum {
    OAE_TR_NONE = 0, OAE_TR_OFFER = 1, OAE_TR_REFLECT = 2,
    OAE_TR_COMMIT = 3, OAE_TR_FREE = 4, OAE_TR_REVERSE = 5
};
/* flags */
#define OAE_F_KEYED 0x01
#define OAE_F_REFUSE 0x02
#define OAE_F_CONTROL 0x04
#define OAE_F_RESERVED 0xF8

/* decode errors (docs/protocol.md section 5); 0 is success */
enum {
    OAE_OK = 0, OAE_E_TRUNCATED = 1, OAE_E_OVERSIZED = 2, OAE_E_ETHERTYPE = 3,
    OAE_E_VERSION = 4, OAE_E_OPCODE = 5, OAE_E_PHASE = 6, OAE_E_STATE = 7,
    OAE_E_TRANSITION = 8, OAE_E_SEQ = 9, OAE_E_NONCE = 10, OAE_E_BEAT = 11,
    OAE_E_LENGTH = 12, OAE_E_FLAGS = 13, OAE_E_PADDING = 14, OAE_E_CHECK = 15
};

typedef struct oae_record {
    uint8_t opcode, phase, state, transition, direction; /* direction: 0 or 1 */
    uint8_t peer_half[4];
    uint32_t tid, epoch, seq, nonce;
    uint32_t commit_upto, held_upto, delivered_upto;
    uint8_t beat_size;  /* 1, 4, 16 or 64 */
    uint8_t beat_index; /* < beat_size */
    uint8_t sack, length, flags;
    uint8_t payload[OAE_PAYLOAD_MAX];
    uint64_t check; /* as found on decode / as written on encode */
} oae_record;

typedef struct oae_frame_hdr {
    uint8_t dst[6], src[6];
    uint16_t ethertype;
} oae_frame_hdr;

typedef struct oae_decode_err {
    int code;    /* OAE_E_*, OAE_OK on success */
    int offset;  /* byte offset in the frame (record offset + 14) */
} oae_decode_err;

/* CRC32C (Castagnoli) of buf. */
uint32_t oae_crc32c(const uint8_t *buf, size_t len);
/* SipHash-2-4 of buf with a 16-byte key. */
uint64_t oae_siphash24(const uint8_t *key, const uint8_t *buf, size_t len);

/* Encode rec into out[64]. key may be NULL (CRC32C); with a key the KEYED flag is set.
 * Fields are written as given (the caller builds valid records); returns 0. */
int oae_record_encode(const oae_record *rec, const uint8_t *key, uint8_t *out);
/* Decode and validate a 64-byte record; offsets in err are record offsets + 14.
 * rec and err may be NULL (validate only; the return value is the code). */
int oae_record_decode(const uint8_t *buf, size_t len, const uint8_t *key, oae_record *rec,
                      oae_decode_err *err);
/* Encode a whole 78-byte frame. */
int oae_frame_encode(const oae_frame_hdr *hdr, const oae_record *rec, const uint8_t *key,
                     uint8_t *out);
/* Decode and validate a whole frame; returns OAE_OK or an OAE_E_* code (also in err).
 * hdr, rec and err may each be NULL (e.g. to validate only). */
int oae_frame_decode(const uint8_t *buf, size_t len, uint16_t ethertype, const uint8_t *key,
                     oae_frame_hdr *hdr, oae_record *rec, oae_decode_err *err);
/* Name of an error code ("TRUNCATED", ...), "OK" for 0, "UNKNOWN" otherwise. */
const char *oae_error_name(int code);
/* Benchmark kernel: encode + decode a frame `iterations` times from rec (seq varied per
 * iteration so no work can be hoisted); returns how many decoded back correctly. */
uint64_t oae_codec_loop(const oae_record *rec, const uint8_t *key, uint64_t iterations);
/* cdef-end */

#endif
