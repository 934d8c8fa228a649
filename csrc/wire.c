/* oae wire format v1 codec: see docs/protocol.md (normative) and wire.h (API).
 *
 * Pure functions over caller-provided buffers: no allocation, no I/O, and the only globals
 * are constant tables, so the codec is safe to call from any thread and from the link pump.
 */
#include "wire.h"

#include <string.h>

/* CRC32C (Castagnoli), reflected polynomial 0x82F63B78, one byte per step. */
static const uint32_t crc32c_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
    0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
    0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
    0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
    0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
    0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
    0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
    0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
    0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
    0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
    0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
    0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
    0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
    0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
    0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
    0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
    0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
    0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
    0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
    0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
    0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
    0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
    0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
    0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
    0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
    0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
    0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
    0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
    0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
    0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

static uint32_t crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        crc = crc32c_table[(crc ^ buf[i]) & 0xFFu] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The SSE4.2 crc32 instruction computes exactly CRC32C; about 10x the table per record,
 * which matters on the link pump's hot path. Chosen at run time, so one build runs
 * everywhere. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *buf,
                                                             size_t len)
{
    uint64_t c = crc;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t word;
        memcpy(&word, buf + i, 8);
        c = __builtin_ia32_crc32di(c, word);
    }
    crc = (uint32_t)c;
    for (; i < len; i++)
        crc = __builtin_ia32_crc32qi(crc, buf[i]);
    return crc;
}

/* The check of a record: CRC32C of its first 56 bytes, unrolled (7 instructions) on the
 * codec's hot path. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_record_hw(const uint8_t *buf)
{
    uint64_t c = 0xFFFFFFFFu, w;
#define CRC_WORD(i) (memcpy(&w, buf + 8 * (i), 8), c = __builtin_ia32_crc32di(c, w))
    CRC_WORD(0); CRC_WORD(1); CRC_WORD(2); CRC_WORD(3); CRC_WORD(4); CRC_WORD(5); CRC_WORD(6);
#undef CRC_WORD
    return (uint32_t)c ^ 0xFFFFFFFFu;
}

static int have_sse42(void)
{
    return __builtin_cpu_supports("sse4.2");
}

uint32_t oae_crc32c(const uint8_t *buf, size_t len)
{
    if (have_sse42())
        return crc32c_hw(0xFFFFFFFFu, buf, len) ^ 0xFFFFFFFFu;
    return crc32c_sw(0xFFFFFFFFu, buf, len) ^ 0xFFFFFFFFu;
}

static uint32_t crc32c_record(const uint8_t *buf)
{
    if (have_sse42())
        return crc32c_record_hw(buf);
    return crc32c_sw(0xFFFFFFFFu, buf, 56) ^ 0xFFFFFFFFu;
}
#else
uint32_t oae_crc32c(const uint8_t *buf, size_t len)
{
    return crc32c_sw(0xFFFFFFFFu, buf, len) ^ 0xFFFFFFFFu;
}

static uint32_t crc32c_record(const uint8_t *buf)
{
    return crc32c_sw(0xFFFFFFFFu, buf, 56) ^ 0xFFFFFFFFu;
}
#endif

/* SipHash-2-4 (Aumasson & Bernstein), little-endian key and message words as specified. */
static inline uint64_t rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define SIPROUND                                                                           \
    do {                                                                                   \
        v0 += v1; v1 = rotl64(v1, 13); v1 ^= v0; v0 = rotl64(v0, 32);                      \
        v2 += v3; v3 = rotl64(v3, 16); v3 ^= v2;                                           \
        v0 += v3; v3 = rotl64(v3, 21); v3 ^= v0;                                           \
        v2 += v1; v1 = rotl64(v1, 17); v1 ^= v2; v2 = rotl64(v2, 32);                      \
    } while (0)

uint64_t oae_siphash24(const uint8_t *key, const uint8_t *buf, size_t len)
{
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    size_t full = len - (len % 8);
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = load_le64(buf + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)buf[full + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xFF;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static inline void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

#if defined(__GNUC__) || defined(__clang__)
/* big-endian fields as one load/store and a byte swap (the byte-wise forms below are not
 * always merged by the compiler) */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define BE32(x) (x)
#else
#define BE32(x) __builtin_bswap32(x)
#endif
static inline void put_be32(uint8_t *p, uint32_t v)
{
    v = BE32(v);
    memcpy(p, &v, 4);
}

static inline uint32_t get_be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return BE32(v);
}
#else
static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
#endif

static inline void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static inline uint64_t get_be64(const uint8_t *p)
{
    return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

static uint8_t beat_code(uint8_t size)
{
    switch (size) {
    case 4: return 1;
    case 16: return 2;
    case 64: return 3;
    default: return 0;
    }
}

int oae_record_encode(const oae_record *rec, const uint8_t *key, uint8_t *out)
{
    out[0] = (uint8_t)((OAE_VERSION << 4) | (rec->opcode & 0x0F));
    out[1] = rec->phase;
    out[2] = rec->state;
    out[3] = (uint8_t)((rec->direction ? 0x80 : 0) | (rec->transition & 0x7F));
    memcpy(out + 4, rec->peer_half, 4);
    put_be32(out + 8, rec->tid);
    put_be32(out + 12, rec->epoch);
    put_be32(out + 16, rec->seq);
    put_be32(out + 20, rec->nonce);
    put_be32(out + 24, rec->commit_upto);
    put_be32(out + 28, rec->held_upto);
    put_be32(out + 32, rec->delivered_upto);
    out[36] = (uint8_t)((beat_code(rec->beat_size) << 6) | (rec->beat_index & 0x3F));
    out[37] = rec->sack;
    out[38] = rec->length;
    out[39] = (uint8_t)((rec->flags & ~OAE_F_KEYED) | (key ? OAE_F_KEYED : 0));
    memcpy(out + 40, rec->payload, OAE_PAYLOAD_MAX);
    if (key) {
        put_be64(out + 56, oae_siphash24(key, out, 56));
    } else {
        put_be32(out + 56, 0);
        put_be32(out + 60, crc32c_record(out));
    }
    return 0;
}

/* 1 if a byte of payload[length..15] is not zero: two word tests instead of a loop over
 * the padding (the loop in decode_body then finds the offset of the error). */
static int padding_dirty(const uint8_t *payload, uint8_t length)
{
    uint64_t w[2];
    memcpy(w, payload, sizeof w);
    for (int i = 0; i < 2; i++) {
        int used = length > 8 * i ? length - 8 * i : 0; /* payload bytes in word i */
        if (used >= 8)
            continue;
        /* keep the bytes at word offsets >= used (byte j of the word is at bits 8j on a
         * little-endian machine, bits 56-8j on a big-endian one) */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        uint64_t pad = used ? ~0ull >> (8 * used) : ~0ull;
#else
        uint64_t pad = used ? ~0ull << (8 * used) : ~0ull;
#endif
        if (w[i] & pad)
            return 1;
    }
    return 0;
}

static int fail(oae_decode_err *err, int code, int offset)
{
    if (err) {
        err->code = code;
        err->offset = offset;
    }
    return code;
}

/* Validate record bytes r[0..63] in the order of docs/protocol.md section 4 and, when rec
 * is not NULL, fill it.  Offsets reported are frame offsets (record offset + 14). */
static int decode_body(const uint8_t *r, const uint8_t *key, oae_record *rec,
                       oae_decode_err *err)
{
    const int base = OAE_ETH_HLEN;
    if ((r[0] >> 4) != OAE_VERSION)
        return fail(err, OAE_E_VERSION, base + 0);
    uint8_t flags = r[39];
    if (flags & OAE_F_KEYED) {
        if (!key || oae_siphash24(key, r, 56) != get_be64(r + 56))
            return fail(err, OAE_E_CHECK, base + 56);
    } else {
        if (key || get_be32(r + 56) != 0 || crc32c_record(r) != get_be32(r + 60))
            return fail(err, OAE_E_CHECK, base + 56);
    }
    uint8_t opcode = r[0] & 0x0F;
    if (opcode < OAE_OP_HELLO || opcode > OAE_OP_BYE)
        return fail(err, OAE_E_OPCODE, base + 0);
    if (r[1] < OAE_PHASE_DISCOVER || r[1] > OAE_PHASE_LIVE)
        return fail(err, OAE_E_PHASE, base + 1);
    if (r[2] > OAE_ST_INDEFINITE)
        return fail(err, OAE_E_STATE, base + 2);
    if ((r[3] & 0x7F) > OAE_TR_REVERSE)
        return fail(err, OAE_E_TRANSITION, base + 3);
    uint32_t seq = get_be32(r + 16), nonce = get_be32(r + 20);
    if (seq == 0)
        return fail(err, OAE_E_SEQ, base + 16);
    if (nonce == 0)
        return fail(err, OAE_E_NONCE, base + 20);
    uint8_t beat_size = (uint8_t)(1u << (2 * (r[36] >> 6)));
    uint8_t beat_index = r[36] & 0x3F;
    if (beat_index >= beat_size)
        return fail(err, OAE_E_BEAT, base + 36);
    uint8_t length = r[38];
    if (length > OAE_PAYLOAD_MAX)
        return fail(err, OAE_E_LENGTH, base + 38);
    if (flags & OAE_F_RESERVED)
        return fail(err, OAE_E_FLAGS, base + 39);
    if (padding_dirty(r + 40, length))
        for (int i = length; i < OAE_PAYLOAD_MAX; i++)
            if (r[40 + i] != 0)
                return fail(err, OAE_E_PADDING, base + 40 + i);
    if (rec) {
        rec->opcode = opcode;
        rec->phase = r[1];
        rec->state = r[2];
        rec->transition = r[3] & 0x7F;
        rec->direction = r[3] >> 7;
        memcpy(rec->peer_half, r + 4, 4);
        rec->tid = get_be32(r + 8);
        rec->epoch = get_be32(r + 12);
        rec->seq = seq;
        rec->nonce = nonce;
        rec->commit_upto = get_be32(r + 24);
        rec->held_upto = get_be32(r + 28);
        rec->delivered_upto = get_be32(r + 32);
        rec->beat_size = beat_size;
        rec->beat_index = beat_index;
        rec->sack = r[37];
        rec->length = length;
        rec->flags = flags;
        memcpy(rec->payload, r + 40, OAE_PAYLOAD_MAX);
        rec->check = get_be64(r + 56);
    }
    return fail(err, OAE_OK, 0);
}

int oae_record_decode(const uint8_t *buf, size_t len, const uint8_t *key, oae_record *rec,
                      oae_decode_err *err)
{
    if (len < OAE_RECORD_LEN)
        return fail(err, OAE_E_TRUNCATED, (int)len + OAE_ETH_HLEN);
    if (len > OAE_RECORD_LEN)
        return fail(err, OAE_E_OVERSIZED, OAE_FRAME_LEN);
    return decode_body(buf, key, rec, err);
}

int oae_frame_encode(const oae_frame_hdr *hdr, const oae_record *rec, const uint8_t *key,
                     uint8_t *out)
{
    memcpy(out, hdr->dst, 6);
    memcpy(out + 6, hdr->src, 6);
    put_be16(out + 12, hdr->ethertype);
    return oae_record_encode(rec, key, out + OAE_ETH_HLEN);
}

int oae_frame_decode(const uint8_t *buf, size_t len, uint16_t ethertype, const uint8_t *key,
                     oae_frame_hdr *hdr, oae_record *rec, oae_decode_err *err)
{
    if (len < OAE_FRAME_LEN)
        return fail(err, OAE_E_TRUNCATED, (int)len);
    if (len > OAE_FRAME_LEN)
        return fail(err, OAE_E_OVERSIZED, OAE_FRAME_LEN);
    uint16_t et = (uint16_t)((buf[12] << 8) | buf[13]);
    if (et != ethertype)
        return fail(err, OAE_E_ETHERTYPE, 12);
    int rc = decode_body(buf + OAE_ETH_HLEN, key, rec, err);
    if (rc == OAE_OK && hdr) {
        memcpy(hdr->dst, buf, 6);
        memcpy(hdr->src, buf + 6, 6);
        hdr->ethertype = et;
    }
    return rc;
}

const char *oae_error_name(int code)
{
    static const char *const names[] = {
        "OK",         "TRUNCATED", "OVERSIZED", "ETHERTYPE", "VERSION", "OPCODE",
        "PHASE",      "STATE",     "TRANSITION", "SEQ",      "NONCE",   "BEAT",
        "LENGTH",     "FLAGS",     "PADDING",   "CHECK",
    };
    if (code < 0 || code > OAE_E_CHECK)
        return "UNKNOWN";
    return names[code];
}

uint64_t oae_codec_loop(const oae_record *rec, const uint8_t *key, uint64_t iterations)
{
    static const oae_frame_hdr hdr = {
        {0x02, 0, 0, 0, 0, 0x02}, {0x02, 0, 0, 0, 0, 0x01}, OAE_ETHERTYPE_DEFAULT};
    uint8_t frame[OAE_FRAME_LEN];
    oae_record in = *rec, out;
    oae_decode_err err;
    uint64_t ok = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        in.seq = (uint32_t)(rec->seq + i) ? (uint32_t)(rec->seq + i) : 1;
        oae_frame_encode(&hdr, &in, key, frame);
        if (oae_frame_decode(frame, sizeof frame, OAE_ETHERTYPE_DEFAULT, key, NULL, &out,
                             &err) == OAE_OK && out.seq == in.seq)
            ok++;
    }
    return ok;
}
