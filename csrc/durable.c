/* oae durable link registers: two CRC32C-checked slots updated in place, one fdatasync. */
#include "durable.h"
#include "bigend.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A slot record (big-endian header, the registers in native layout: one machine):
 *   0 magic "OADR"  4 format  6 length of the registers  8 sequence number (u64)
 *   16 the registers  16+len CRC32C of every byte before it
 * Slot 0 is at offset 0, slot 1 at OAE_DURABLE_SLOT; the rest of each slot is zero. The
 * slots sit in different 4 KiB blocks, so writing one never rewrites the other's sectors. */
#define SLOT_MAGIC 0x4F414452u /* "OADR" */
#define SLOT_FORMAT 1
#define REC_HDR 16
#define REC_LEN (REC_HDR + sizeof(oae_link_durable) + 4)
#define FILE_LEN (2 * OAE_DURABLE_SLOT)
/* the single-record file written before this layout: magic "OAED", CRC32C, registers */
#define LEGACY_MAGIC 0x4F414544u
#define LEGACY_LEN (8 + sizeof(oae_link_durable))

/* serial-number order (RFC 1982 style): a is newer than b; a store always writes newest+1,
 * so the two valid slots differ by one and the order survives a wrap of the counter */
static int seq_newer(uint64_t a, uint64_t b)
{
    return (int64_t)(a - b) > 0;
}

static void encode(uint8_t *rec, uint64_t seq, const oae_link_durable *d)
{
    put32(rec, SLOT_MAGIC);
    rec[4] = 0; rec[5] = SLOT_FORMAT;
    rec[6] = (uint8_t)(sizeof *d >> 8); rec[7] = (uint8_t)sizeof *d;
    put64(rec + 8, seq);
    memcpy(rec + REC_HDR, d, sizeof *d);
    put32(rec + REC_HDR + sizeof *d, oae_crc32c(rec, REC_HDR + sizeof *d));
}

static int slot_valid(const uint8_t *rec)
{
    return get32(rec) == SLOT_MAGIC && rec[4] == 0 && rec[5] == SLOT_FORMAT &&
           ((size_t)rec[6] << 8 | rec[7]) == sizeof(oae_link_durable) &&
           get32(rec + REC_HDR + sizeof(oae_link_durable)) ==
               oae_crc32c(rec, REC_HDR + sizeof(oae_link_durable));
}

/* The valid slot with the newest sequence number among the n bytes of buf (a file image,
 * possibly short): its index and sequence number, or -1 if no slot is valid. */
static int newest_slot(const uint8_t *buf, size_t n, uint64_t *seq)
{
    int best = -1;
    for (int i = 0; i < 2; i++) {
        const uint8_t *rec = buf + (size_t)i * OAE_DURABLE_SLOT;
        if (n < (size_t)i * OAE_DURABLE_SLOT + REC_LEN || !slot_valid(rec))
            continue;
        uint64_t s = get64(rec + 8);
        if (best < 0 || seq_newer(s, *seq)) {
            best = i;
            *seq = s;
        }
    }
    return best;
}

static int legacy_valid(const uint8_t *buf, size_t n)
{
    return n == LEGACY_LEN && get32(buf) == LEGACY_MAGIC &&
           get32(buf + 4) == oae_crc32c(buf + 8, sizeof(oae_link_durable));
}

int oae_fsync_dir_of(const char *path)
{
    char dir[4096];
    size_t n = strlen(path);
    if (n >= sizeof dir)
        return -ENAMETOOLONG;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    int rc = fsync(dfd) < 0 ? -errno : 0;
    close(dfd);
    return rc;
}

int oae_file_replace(const char *path, const uint8_t *buf, size_t len)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    size_t done = 0;
    while (!rc && done < len) {
        ssize_t w = write(fd, buf + done, len - done);
        if (w > 0)
            done += (size_t)w;
        else if (w == 0 || errno != EINTR)
            rc = w == 0 ? -EIO : -errno;
    }
    if (!rc && fdatasync(fd) < 0)
        rc = -errno;
    close(fd);
    if (!rc && rename(tmp, path) < 0)
        rc = -errno;
    if (!rc)
        return oae_fsync_dir_of(path);
    unlink(tmp);
    return rc;
}

/* A new file (record in slot 0, slot 1 empty), put in place atomically.  Only when the
 * file is missing or not in this layout. */
static int create_file(const char *path, const oae_link_durable *d, uint64_t seq)
{
    uint8_t img[FILE_LEN];
    memset(img, 0, sizeof img);
    encode(img, seq, d);
    return oae_file_replace(path, img, sizeof img);
}

int oae_durable_store(const char *path, const oae_link_durable *d)
{
    uint8_t buf[FILE_LEN + 1];
    uint8_t rec[REC_LEN];
    uint64_t seq = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? create_file(path, d, 1) : -errno;
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    if (n < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int newest = newest_slot(buf, (size_t)n, &seq);
    if (n != (ssize_t)FILE_LEN) { /* an older layout or a damaged file: replace it whole */
        close(fd);
        return create_file(path, d, newest < 0 ? 1 : seq + 1);
    }
    /* overwrite the slot that does not hold the newest record (either slot if none does) */
    int target = newest < 0 ? 0 : 1 - newest;
    encode(rec, newest < 0 ? 1 : seq + 1, d);
    int rc = 0;
    errno = 0;
    if (pwrite(fd, rec, REC_LEN, (off_t)target * OAE_DURABLE_SLOT) != (ssize_t)REC_LEN ||
        fdatasync(fd) < 0)
        rc = errno ? -errno : -EIO;
    close(fd);
    return rc;
}

int oae_durable_load(const char *path, oae_link_durable *out)
{
    uint8_t buf[FILE_LEN + 1];
    uint64_t seq = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    int err = n < 0 ? -errno : 0;
    close(fd);
    if (err)
        return err;
    if (legacy_valid(buf, (size_t)n)) {
        memcpy(out, buf + 8, sizeof *out);
    } else {
        int newest = n > (ssize_t)FILE_LEN ? -1 : newest_slot(buf, (size_t)n, &seq);
        if (newest < 0)
            return -EINVAL;
        memcpy(out, buf + (size_t)newest * OAE_DURABLE_SLOT + REC_HDR, sizeof *out);
    }
    return out->version == OAE_LINK_DURABLE_VERSION ? 0 : -EINVAL;
}
