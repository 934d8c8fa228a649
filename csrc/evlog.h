/* oae event log: what one link end owes its application across crashes of its process
 * (state_dir/events.log).  docs/applications.md is normative.
 *
 * The pump appends records and fdatasyncs the log before it stores the link's durable
 * registers (csrc/durable.c), so the registers never count anything the log lacks:
 *   OFFER      an outgoing transfer: tid, the application's key, payload (before its frame)
 *   COMMITTED / ABORTED   its outcome, with the key (and an aborted payload)
 *   ACK        the application consumed the outcomes of tids tid..aux
 *   DELIVERED  an incoming transfer handed to the application
 *   RELEASE    the application released every incoming tid <= tid
 *   HEAD       first record: what compacted records leave behind (last key, released,
 *              highest delivered tid)
 * Replaying a log against the registers gives the live records: the offers still open, the
 * outcomes not yet acknowledged (and those the engine would report again after a restart),
 * the deliveries not yet released.  A compacted log is exactly those, written atomically
 * (temp file, fdatasync, rename, directory fsync). */
#ifndef OAE_EVLOG_H
#define OAE_EVLOG_H

#include <stddef.h>
#include <stdint.h>

#include "link.h"

/* cdef-begin */
#define OAE_LOG_REC_LEN 48    /* a record of this format (magic 'M') */
#define OAE_LOG_V1_REC_LEN 40 /* a record of the first format (magic 'L'), read and converted */

/* record types; DELIVERED, COMMITTED and ABORTED are the OAE_EV_* values */
enum {
    OAE_LOG_OFFER = 32,
    OAE_LOG_ACK = 33,
    OAE_LOG_RELEASE = 34,
    OAE_LOG_HEAD = 35
};
#define OAE_LOGF_ACKED 0x40 /* outcome record: the application has acknowledged it */

typedef struct oae_log_record {
    uint8_t type;       /* OAE_EV_DELIVERED/COMMITTED/ABORTED or OAE_LOG_* */
    uint8_t flags;      /* event flags (OAE_EVF_RESTORED), OAE_LOGF_ACKED */
    uint8_t data_flags; /* the transfer's OAE_F_CONTROL bit */
    uint8_t length;     /* payload bytes */
    uint32_t tid;
    uint32_t aux;       /* ACK: last tid of the range; HEAD: highest delivered tid */
    uint64_t key;       /* OFFER and outcomes: the application's key (0: none); HEAD: last key */
    uint8_t payload[16];
} oae_log_record;

/* Encode r as OAE_LOG_REC_LEN bytes at out. */
void oae_log_encode(uint8_t *out, const oae_log_record *r);
/* Decode the record at buf (len bytes available): its length (OAE_LOG_REC_LEN, or
 * OAE_LOG_V1_REC_LEN for a record of the first format, which becomes a DELIVERED or an
 * acknowledged outcome), or 0 if it is short, torn or damaged. */
size_t oae_log_decode(const uint8_t *buf, size_t len, oae_log_record *out);

typedef struct oae_log_state {
    uint64_t last_key;      /* highest key of an offer the registers count (0: none) */
    uint32_t released;      /* every incoming tid <= this was released */
    uint32_t delivered_max; /* highest incoming tid ever logged as delivered */
    size_t torn;            /* bytes of a torn tail that were ignored */
    size_t n;               /* live records, HEAD first, then in log order */
    oae_log_record *rec;
} oae_log_state;

/* Replay the log image buf[0..len) against the durable registers stored after it: offers
 * of tids above regs->out_hi were never revealed (dropped); outcomes of tids above
 * regs->out_settled are kept (the engine settles those tids again, and the pump must not
 * report them twice), the others only until acknowledged; deliveries until released.
 * Returns 0, -EBADMSG if a damaged record is followed by valid ones (not a torn tail), or
 * -ENOMEM.  Free st with oae_log_state_free (also after an error). */
int oae_log_replay(const uint8_t *buf, size_t len, const oae_link_durable *regs,
                   oae_log_state *st);
void oae_log_state_free(oae_log_state *st);
/* Write st's records as the whole log at path, atomically: path.tmp, fdatasync, rename,
 * fsync of the directory.  Returns 0 or -errno (path is then unchanged). */
int oae_log_store(const char *path, const oae_log_state *st);
/* Read the whole file at path into *buf (malloc'd; free it); a missing file is empty.
 * Returns 0 or -errno. */
int oae_log_read_file(const char *path, uint8_t **buf, size_t *len);
/* cdef-end */

#endif
