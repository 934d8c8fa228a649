/* oae durable link registers: stored and loaded atomically, checked by CRC32C. */
#include "durable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DURABLE_MAGIC 0x4F414544u /* "OAED" */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int fsync_dir_of(const char *path)
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

/* file image: magic, crc32c of the struct, the struct (native layout, one machine) */
int oae_durable_store(const char *path, const oae_link_durable *d)
{
    char tmp[4096];
    uint8_t img[8 + sizeof *d];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return -ENAMETOOLONG;
    put32(img, DURABLE_MAGIC);
    memcpy(img + 8, d, sizeof *d);
    put32(img + 4, oae_crc32c(img + 8, sizeof *d));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (write(fd, img, sizeof img) != (ssize_t)sizeof img || fsync(fd) < 0)
        rc = errno ? -errno : -EIO;
    close(fd);
    if (!rc && rename(tmp, path) < 0)
        rc = -errno;
    if (!rc)
        rc = fsync_dir_of(path);
    return rc;
}

int oae_durable_load(const char *path, oae_link_durable *out)
{
    uint8_t img[8 + sizeof *out + 1];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, img, sizeof img);
    close(fd);
    if (n != (ssize_t)(8 + sizeof *out) || get32(img) != DURABLE_MAGIC ||
        get32(img + 4) != oae_crc32c(img + 8, sizeof *out))
        return -EINVAL;
    memcpy(out, img + 8, sizeof *out);
    return out->version == OAE_LINK_DURABLE_VERSION ? 0 : -EINVAL;
}

