/*
 * unmovable: puts unmovable kernel memory on one guest NUMA node and keeps it there, so
 * the end-to-end tests can make a real guest refuse to give memory back (a static group
 * that cannot be offlined, a virtio-mem shrink the guest can only partly do).
 *
 *   unmovable <node> <bytes>
 *
 * Binds the process's memory policy to <node> (set_mempolicy MPOL_BIND, raw syscall: no
 * libnuma in the guest), then makes the kernel allocate about <bytes> of page tables
 * there: a sparse anonymous mapping is read one byte every 2 MiB, and each read maps the
 * shared zero page through a fresh PTE page (no data page is allocated). Page tables are
 * neither on an LRU list nor movable, so offline_pages() / alloc_contig_range() fail fast
 * on the memory blocks that hold them ("unmovable page", EBUSY) instead of retrying
 * migration until a fatal signal, as they would for pinned pages.
 *
 * The work is done in a detached child that keeps the memory until it is killed; the
 * parent prints "pid=<child> pagetables=<n> node=<node>" once the child has allocated
 * everything, then exits 0 (so a guest-exec caller gets its answer). Exit 1 with a message
 * on failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MPOL_BIND 2
#define PTE_SPAN (2UL << 20) /* virtual bytes one x86_64 PTE page maps */
#define PAGE 4096UL

static int fail(const char *what) {
  fprintf(stderr, "unmovable: %s: %s\n", what, strerror(errno));
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: unmovable <node> <bytes>\n");
    return 2;
  }
  char *end;
  long node = strtol(argv[1], &end, 10);
  if (*end || node < 0 || node >= 64) {
    fprintf(stderr, "unmovable: node must be 0..63, got %s\n", argv[1]);
    return 2;
  }
  unsigned long long bytes = strtoull(argv[2], &end, 10);
  if (*end || bytes < PAGE) {
    fprintf(stderr, "unmovable: bytes must be an integer >= %lu, got %s\n", PAGE, argv[2]);
    return 2;
  }
  unsigned long tables = bytes / PAGE;

  int ready[2];
  if (pipe(ready) != 0) return fail("pipe");
  pid_t child = fork();
  if (child < 0) return fail("fork");
  if (child > 0) {
    close(ready[1]);
    char msg[256] = {0};
    ssize_t n = read(ready[0], msg, sizeof msg - 1);
    if (n <= 0) {
      fprintf(stderr, "unmovable: the child died before it was ready\n");
      return 1;
    }
    if (strncmp(msg, "ok", 2) != 0) {
      fprintf(stderr, "unmovable: %s\n", msg);
      return 1;
    }
    printf("pid=%d pagetables=%lu node=%ld\n", (int)child, tables, node);
    return 0;
  }

  /* The child: its own session, no ties to the caller's output pipes. */
  close(ready[0]);
  setsid();
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
  }
  char err[200];
  unsigned long mask = 1UL << node;
  if (syscall(SYS_set_mempolicy, MPOL_BIND, &mask, 64UL) != 0) {
    snprintf(err, sizeof err, "set_mempolicy(MPOL_BIND, node %ld): %s", node, strerror(errno));
    if (write(ready[1], err, strlen(err))) {}
    _exit(1);
  }
  size_t span = tables * PTE_SPAN;
  volatile unsigned char *area = mmap(NULL, span, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (area == MAP_FAILED) {
    snprintf(err, sizeof err, "mmap %zu bytes: %s", span, strerror(errno));
    if (write(ready[1], err, strlen(err))) {}
    _exit(1);
  }
  /* No transparent huge zero page: one PTE page per 2 MiB, whatever the THP setting. */
  madvise((void *)area, span, MADV_NOHUGEPAGE);
  unsigned long sum = 0;
  for (unsigned long i = 0; i < tables; i++) sum += area[i * PTE_SPAN];
  if (sum != 0) {
    snprintf(err, sizeof err, "the zero page read %lu", sum);
    if (write(ready[1], err, strlen(err))) {}
    _exit(1);
  }
  if (write(ready[1], "ok", 2) != 2) _exit(1);
  close(ready[1]);
  for (;;) pause();
}
