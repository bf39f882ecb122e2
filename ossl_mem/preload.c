/* preload.c - libossl_mem_preload.so: installs ossl_mem from a constructor in an unmodified OpenSSL program. */
#include <stdio.h>

#include "ossl_mem.h"

/*
 * Runs when the dynamic linker loads the library (LD_PRELOAD), before the
 * program's main(): early enough that OpenSSL has not allocated yet, unless
 * another constructor used it. Options come from OSSL_MEM_OPTIONS, so the
 * exit report is OSSL_MEM_OPTIONS=report=FILE (%p in FILE becomes the pid,
 * one file per process of a forking server). On failure the program runs
 * on OpenSSL's own allocator and one line on stderr says why.
 */
__attribute__((constructor)) static void preload_install(void)
{
    int rc = ossl_mem_init(NULL);
    if (rc == OSSL_MEM_E_TOO_LATE || rc == OSSL_MEM_E_HOOKED)
        fprintf(stderr, "ossl_mem_preload: OpenSSL was already initialised in this program (%s); "
                "leaving it alone\n", ossl_mem_strerror(rc));
    else if (rc != 0 && rc != OSSL_MEM_E_AGAIN)
        fprintf(stderr, "ossl_mem_preload: not installed: %s\n", ossl_mem_strerror(rc));
}
