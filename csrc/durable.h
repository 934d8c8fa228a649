/* oae durable link registers: the file that lets a link end restart where it was. */
#ifndef OAE_DURABLE_H
#define OAE_DURABLE_H

#include "link.h"

/* cdef-begin */
/* Durable files: registers are written atomically (temp, fsync, rename, fsync dir).
 * load returns 0, -ENOENT (none yet) or -EINVAL (damaged or another version). */
int oae_durable_load(const char *path, oae_link_durable *out);
int oae_durable_store(const char *path, const oae_link_durable *d);
/* cdef-end */

#endif
