/* Standalone check of the durable register file (csrc/durable.c) for sanitizer builds:
 * `make durable_check` (ASan + UBSan), run as `durable_check.bin DIR`. Stores and loads,
 * a torn write at every byte offset (prefix and suffix), a flipped byte in each slot,
 * truncation at every length, the sequence wrap, and random file contents. Prints
 * "durable_check: ok" and exits 0, or names the first failure and exits 1. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "durable.h"

#define FILE_LEN (2 * OAE_DURABLE_SLOT)
#define REC_LEN (16 + sizeof(oae_link_durable) + 4)

static char path[4096];
static int failures;

#define CHECK(cond, ...)                                                                \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            printf("durable_check: FAIL line %d: ", __LINE__);                           \
            printf(__VA_ARGS__);                                                        \
            printf("\n");                                                               \
            failures++;                                                                 \
            return;                                                                     \
        }                                                                               \
    } while (0)

static oae_link_durable regs(uint32_t n)
{
    oae_link_durable d;
    memset(&d, 0, sizeof d);
    d.version = OAE_LINK_DURABLE_VERSION;
    d.peer_mac[5] = (uint8_t)n;
    d.has_peer = 1;
    d.out_hi = d.out_settled = n;
    d.in_delivered = 3 * n;
    d.epoch = n / 2;
    return d;
}

static void put_file(const uint8_t *img, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, img, n) != (ssize_t)n) {
        perror(path);
        exit(2);
    }
    close(fd);
}

static size_t get_file(uint8_t *img, size_t cap)
{
    int fd = open(path, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, img, cap);
    if (n < 0) {
        perror(path);
        exit(2);
    }
    close(fd);
    return (size_t)n;
}

/* rc of load; *which = out_hi of the record read, after checking it is that whole record */
static int load(uint32_t *which)
{
    oae_link_durable d;
    int rc = oae_durable_load(path, &d);
    if (rc == 0) {
        oae_link_durable want = regs(d.out_hi);
        *which = memcmp(&d, &want, sizeof d) ? 0xFFFFFFFFu : d.out_hi;
    }
    return rc;
}

static uint8_t before[FILE_LEN + 1], after[FILE_LEN + 1], img[FILE_LEN + 1];

static void two_slots(void)
{
    unlink(path);
    oae_link_durable d1 = regs(1), d2 = regs(2), d3 = regs(3);
    if (oae_durable_store(path, &d1) || oae_durable_store(path, &d2)) {
        printf("durable_check: store failed\n");
        exit(2);
    }
    get_file(before, sizeof before);
    if (oae_durable_store(path, &d3))
        exit(2);
    get_file(after, sizeof after);
}

static void check_round_trip(void)
{
    uint32_t w = 0;
    unlink(path);
    CHECK(load(&w) == -ENOENT, "missing file");
    for (uint32_t n = 1; n < 50; n++) {
        oae_link_durable d = regs(n);
        CHECK(oae_durable_store(path, &d) == 0, "store %u", n);
        CHECK(load(&w) == 0 && w == n, "load after store %u gave %u", n, w);
    }
}

static void check_torn(void)
{
    two_slots();
    for (size_t k = 0; k <= REC_LEN; k++) {
        uint32_t w = 0;
        memcpy(img, before, FILE_LEN);
        memcpy(img, after, k); /* prefix of the new record reached the disk */
        put_file(img, FILE_LEN);
        uint32_t want = memcmp(img, after, FILE_LEN) ? 2u : 3u; /* whole new record, or old */
        CHECK(load(&w) == 0 && w == want, "torn prefix %zu gave %u", k, w);
        memcpy(img, before, FILE_LEN);
        memcpy(img + k, after + k, REC_LEN - k); /* suffix reached the disk */
        put_file(img, FILE_LEN);
        want = memcmp(img, after, FILE_LEN) ? 2u : 3u;
        CHECK(load(&w) == 0 && w == want, "torn suffix %zu gave %u", k, w);
        oae_link_durable d4 = regs(4);
        CHECK(oae_durable_store(path, &d4) == 0 && load(&w) == 0 && w == 4, "store after torn");
    }
}

static void check_corrupt(void)
{
    two_slots();
    for (int slot = 0; slot < 2; slot++)
        for (size_t k = 0; k < REC_LEN; k++) {
            uint32_t w = 0;
            memcpy(img, after, FILE_LEN);
            img[(size_t)slot * OAE_DURABLE_SLOT + k] ^= 0x5A;
            put_file(img, FILE_LEN);
            CHECK(load(&w) == 0 && w == (slot ? 3u : 2u), "slot %d byte %zu gave %u", slot, k, w);
        }
}

static void check_truncated(void)
{
    two_slots();
    for (size_t n = 0; n <= FILE_LEN; n++) {
        uint32_t w = 0;
        put_file(after, n);
        int rc = load(&w);
        if (n < REC_LEN)
            CHECK(rc == -EINVAL, "truncated to %zu: rc %d", n, rc);
        else
            CHECK(rc == 0 && w == 3, "truncated to %zu: rc %d, %u", n, rc, w);
    }
    oae_link_durable d = regs(9);
    uint32_t w = 0;
    CHECK(oae_durable_store(path, &d) == 0 && load(&w) == 0 && w == 9, "store on truncated");
    CHECK(get_file(img, sizeof img) == FILE_LEN, "rewritten whole");
}

static void check_wrap(void)
{
    two_slots(); /* slot 0: seq 3, slot 1: seq 2; move both near the wrap, fix the CRCs */
    memcpy(img, after, FILE_LEN);
    for (int slot = 0; slot < 2; slot++) {
        uint8_t *r = img + (size_t)slot * OAE_DURABLE_SLOT;
        uint64_t seq = UINT64_MAX - (uint64_t)slot;
        for (int i = 0; i < 8; i++)
            r[8 + i] = (uint8_t)(seq >> (56 - 8 * i));
        uint32_t crc = oae_crc32c(r, REC_LEN - 4);
        for (int i = 0; i < 4; i++)
            r[REC_LEN - 4 + i] = (uint8_t)(crc >> (24 - 8 * i));
    }
    put_file(img, FILE_LEN);
    uint32_t w = 0;
    CHECK(load(&w) == 0 && w == 3, "before the wrap: %u", w);
    for (uint32_t n = 10; n < 14; n++) {
        oae_link_durable d = regs(n);
        CHECK(oae_durable_store(path, &d) == 0 && load(&w) == 0 && w == n, "wrap %u: %u", n, w);
    }
}

static void check_garbage(void)
{
    srand(7);
    for (int i = 0; i < 2000; i++) {
        size_t n = (size_t)rand() % (FILE_LEN + 2);
        for (size_t k = 0; k < n; k++)
            img[k] = (uint8_t)rand();
        if (i % 3 == 0 && n >= 4) { /* a plausible magic, to reach the CRC check */
            img[0] = 'O'; img[1] = 'A'; img[2] = 'D'; img[3] = 'R';
        }
        put_file(img, n);
        uint32_t w = 0;
        int rc = load(&w);
        CHECK(rc == -EINVAL, "garbage %d (%zu bytes): rc %d", i, n, rc);
    }
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    snprintf(path, sizeof path, "%s/durable_check.reg", dir);
    check_round_trip();
    check_torn();
    check_corrupt();
    check_truncated();
    check_wrap();
    check_garbage();
    unlink(path);
    if (failures)
        return 1;
    printf("durable_check: ok\n");
    return 0;
}
