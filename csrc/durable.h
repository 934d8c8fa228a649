/* oae durable link registers: the file that lets a link end restart where it was. */
#ifndef OAE_DURABLE_H
#define OAE_DURABLE_H

#include "link.h"

/* cdef-begin */
/* Durable register file: two fixed 4096-byte slots, each holding a record (magic, format,
 * length, 64-bit sequence number, the registers, CRC32C). A store pwrites the slot that
 * does not hold the newest valid record and fdatasyncs once; a crash at any point leaves
 * the old or the new record (a torn slot fails its CRC and is ignored). The file is
 * created (temp, fsync, rename, fsync dir) only when missing or not in this layout.
 * load returns 0, -ENOENT (none yet) or -EINVAL (damaged or another version); it takes
 * the valid slot with the newest sequence number (serial order, so wrap is harmless). */
#define OAE_DURABLE_SLOT 4096
int oae_durable_load(const char *path, oae_link_durable *out);
int oae_durable_store(const char *path, const oae_link_durable *d);
/* cdef-end */

/* fsync the directory that holds path (after a rename into it).  0 or -errno. */
int oae_fsync_dir_of(const char *path);
/* Put len bytes at path atomically: path.tmp written and fdatasync'ed, renamed over path,
 * the directory fsync'ed.  0 or -errno (path unchanged, path.tmp removed). */
int oae_file_replace(const char *path, const uint8_t *buf, size_t len);

#endif
