/* Fuzz target and sanitizer driver for the wire codec (wire.c); see docs/fuzzing.md.
 *
 * Built with -fsanitize=fuzzer,address,undefined it is a libFuzzer target. Input layout:
 * byte 0 selects the mode (bit 0: decode with a key, taken from the next 16 bytes; bit 1:
 * expect EtherType 0x88B6 instead of 0x88B5); the rest is the frame. Any crash, sanitizer
 * report or abort() below is a bug. Checked for every input:
 *   - decoding never reads or writes out of bounds (ASan) or hits undefined behaviour (UBSan);
 *   - the return code, err->code and the NULL-output variant agree; offsets lie in the frame;
 *   - an accepted frame is exactly 78 bytes, its fields are in range, and re-encoding it
 *     gives back the same bytes (so its check is correct and the encoding canonical);
 *   - a record built from the input bytes (clamped into range) encodes to a frame that
 *     decodes back to the same record.
 *
 * Built with -DOAE_VECTOR_DRIVER it is instead a standalone program that reads golden
 * vectors from stdin, one per line: "<frame hex> <ethertype> <key hex or -> <code> <offset>"
 * (offset is ignored for code 0), and checks the codec against each of them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define REQUIRE(cond)                                                                      \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_wire: %s:%d: requirement failed: %s\n", __FILE__,        \
                    __LINE__, #cond);                                                      \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void check_record_in_range(const oae_record *r)
{
    REQUIRE(r->opcode >= OAE_OP_HELLO && r->opcode <= OAE_OP_BYE);
    REQUIRE(r->phase >= OAE_PHASE_DISCOVER && r->phase <= OAE_PHASE_LIVE);
    REQUIRE(r->state <= OAE_ST_INDEFINITE);
    REQUIRE(r->transition <= OAE_TR_REVERSE);
    REQUIRE(r->direction <= 1);
    REQUIRE(r->seq != 0 && r->nonce != 0);
    REQUIRE(r->beat_size == 1 || r->beat_size == 4 || r->beat_size == 16 || r->beat_size == 64);
    REQUIRE(r->beat_index < r->beat_size);
    REQUIRE(r->length <= OAE_PAYLOAD_MAX);
    REQUIRE((r->flags & OAE_F_RESERVED) == 0);
    for (int i = r->length; i < OAE_PAYLOAD_MAX; i++)
        REQUIRE(r->payload[i] == 0);
}

static void check_decode(const uint8_t *frame, size_t len, uint16_t ethertype,
                         const uint8_t *key)
{
    oae_frame_hdr hdr;
    oae_record rec;
    oae_decode_err err = {-1, -1};
    int rc = oae_frame_decode(frame, len, ethertype, key, &hdr, &rec, &err);
    REQUIRE(rc == err.code);
    REQUIRE(rc == oae_frame_decode(frame, len, ethertype, key, NULL, NULL, NULL));
    REQUIRE(strcmp(oae_error_name(rc), "UNKNOWN") != 0);
    if (rc != OAE_OK) {
        REQUIRE(rc >= OAE_E_TRUNCATED && rc <= OAE_E_CHECK);
        REQUIRE(err.offset >= 0 && err.offset <= OAE_FRAME_LEN);
        if (rc == OAE_E_TRUNCATED)
            REQUIRE((size_t)err.offset == len);
        return;
    }
    REQUIRE(len == OAE_FRAME_LEN);
    REQUIRE(hdr.ethertype == ethertype);
    REQUIRE(((rec.flags & OAE_F_KEYED) != 0) == (key != NULL));
    check_record_in_range(&rec);
    uint8_t again[OAE_FRAME_LEN];
    oae_frame_encode(&hdr, &rec, key, again);
    REQUIRE(memcmp(again, frame, OAE_FRAME_LEN) == 0);
    oae_record rec2;
    REQUIRE(oae_record_decode(frame + OAE_ETH_HLEN, OAE_RECORD_LEN, key, &rec2, NULL) == OAE_OK);
    REQUIRE(memcmp(rec2.payload, rec.payload, OAE_PAYLOAD_MAX) == 0 && rec2.check == rec.check);
}

/* Build a valid record from arbitrary bytes, encode it, and decode it back. */
static void check_encode(const uint8_t *data, size_t size, const uint8_t *key)
{
    uint8_t b[48] = {0};
    memcpy(b, data, size < sizeof b ? size : sizeof b);
    oae_record r;
    memset(&r, 0, sizeof r);
    r.opcode = (uint8_t)(1 + b[0] % 4);
    r.phase = (uint8_t)(1 + b[1] % 3);
    r.state = (uint8_t)(b[2] % 6);
    r.transition = (uint8_t)(b[3] % 6);
    r.direction = b[3] >> 7;
    memcpy(r.peer_half, b + 4, 4);
    uint32_t w[7];
    memcpy(w, b + 8, sizeof w);
    r.tid = w[0];
    r.epoch = w[1];
    r.seq = w[2] ? w[2] : 1;
    r.nonce = w[3] ? w[3] : 1;
    r.commit_upto = w[4];
    r.held_upto = w[5];
    r.delivered_upto = w[6];
    static const uint8_t sizes[4] = {1, 4, 16, 64};
    r.beat_size = sizes[b[36] >> 6];
    r.beat_index = (uint8_t)(b[36] % r.beat_size);
    r.sack = b[37];
    r.length = (uint8_t)(b[38] % (OAE_PAYLOAD_MAX + 1));
    r.flags = b[39] & (OAE_F_REFUSE | OAE_F_CONTROL);
    memcpy(r.payload, b + 40, 8);
    memcpy(r.payload + 8, b + 40, 8);
    memset(r.payload + r.length, 0, OAE_PAYLOAD_MAX - r.length);
    oae_frame_hdr hdr = {{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10, 11, 12}, OAE_ETHERTYPE_DEFAULT};
    uint8_t frame[OAE_FRAME_LEN];
    oae_frame_encode(&hdr, &r, key, frame);
    oae_record out;
    REQUIRE(oae_frame_decode(frame, sizeof frame, OAE_ETHERTYPE_DEFAULT, key, NULL, &out,
                             NULL) == OAE_OK);
    uint8_t keyed = key ? OAE_F_KEYED : 0;
    REQUIRE(out.opcode == r.opcode && out.phase == r.phase && out.state == r.state);
    REQUIRE(out.transition == r.transition && out.direction == r.direction);
    REQUIRE(memcmp(out.peer_half, r.peer_half, 4) == 0);
    REQUIRE(out.tid == r.tid && out.epoch == r.epoch && out.seq == r.seq && out.nonce == r.nonce);
    REQUIRE(out.commit_upto == r.commit_upto && out.held_upto == r.held_upto);
    REQUIRE(out.delivered_upto == r.delivered_upto);
    REQUIRE(out.beat_size == r.beat_size && out.beat_index == r.beat_index);
    REQUIRE(out.sack == r.sack && out.length == r.length && out.flags == (r.flags | keyed));
    REQUIRE(memcmp(out.payload, r.payload, OAE_PAYLOAD_MAX) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    const uint8_t *key = NULL;
    uint8_t keybuf[OAE_KEY_LEN];
    if (mode & 1) {
        if (size < OAE_KEY_LEN)
            return 0;
        memcpy(keybuf, data, OAE_KEY_LEN);
        key = keybuf;
        data += OAE_KEY_LEN;
        size -= OAE_KEY_LEN;
    }
    uint16_t ethertype = (mode & 2) ? 0x88B6 : OAE_ETHERTYPE_DEFAULT;
    /* Copy into an exactly sized heap buffer so ASan catches any read past the frame. */
    uint8_t *frame = malloc(size ? size : 1);
    REQUIRE(frame != NULL);
    memcpy(frame, data, size);
    check_decode(frame, size, ethertype, key);
    free(frame);
    check_encode(data, size, key);
    return 0;
}

#ifdef OAE_VECTOR_DRIVER
static int unhex(const char *hex, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

int main(void)
{
    char fhex[512], khex[64];
    unsigned ethertype;
    int code, offset, lineno = 0, failures = 0;
    while (scanf("%511s %u %63s %d %d", fhex, &ethertype, khex, &code, &offset) == 5) {
        lineno++;
        uint8_t frame[256], keybuf[OAE_KEY_LEN];
        size_t len = 0, klen = 0;
        const uint8_t *key = NULL;
        if (strcmp(fhex, "-") != 0 && unhex(fhex, frame, sizeof frame, &len) != 0) {
            fprintf(stderr, "vector %d: bad frame hex\n", lineno);
            return 2;
        }
        if (strcmp(khex, "-") != 0) {
            if (unhex(khex, keybuf, sizeof keybuf, &klen) != 0 || klen != OAE_KEY_LEN) {
                fprintf(stderr, "vector %d: bad key hex\n", lineno);
                return 2;
            }
            key = keybuf;
        }
        /* An exactly sized heap copy, so ASan sees reads past the end of the frame. */
        uint8_t *exact = malloc(len ? len : 1);
        REQUIRE(exact != NULL);
        memcpy(exact, frame, len);
        oae_decode_err err = {-1, -1};
        oae_record rec;
        int rc = oae_frame_decode(exact, len, (uint16_t)ethertype, key, NULL, &rec, &err);
        if (rc != code || (rc != OAE_OK && err.offset != offset)) {
            fprintf(stderr, "vector %d: got %s at %d, want %s at %d\n", lineno,
                    oae_error_name(rc), err.offset, oae_error_name(code), offset);
            failures++;
        }
        check_decode(exact, len, (uint16_t)ethertype, key);
        free(exact);
    }
    printf("%d vectors, %d failures\n", lineno, failures);
    return failures ? 1 : 0;
}
#endif
