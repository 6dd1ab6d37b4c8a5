/* test.h -- a tiny assertion kit for thaw's C tests.
 *
 * A test file defines functions `static void test_xxx(void)` and lists them in main with
 * TEST_RUN(test_xxx). Each CHECK prints both sides on failure and marks the test failed;
 * the program exits nonzero if anything failed and prints "N passed, N failed". A test that
 * cannot run prints why with TEST_SKIP and counts as skipped, never as passed. */
#ifndef THAW_TEST_H
#define THAW_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_, test_n_pass_, test_n_fail_, test_n_skip_, test_skipped_;

#define CHECK(c)                                                                   \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); \
            test_failed_ = 1;                                                      \
        }                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                      \
    do {                                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                                  \
        if (a_ != b_) {                                                                      \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, \
                    #a, #b, a_, b_);                                                         \
            test_failed_ = 1;                                                                \
        }                                                                                    \
    } while (0)

#define CHECK_STR(a, b)                                                                         \
    do {                                                                                        \
        const char *a_ = (a), *b_ = (b);                                                        \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                \
            fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, \
                    #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                            \
            test_failed_ = 1;                                                                   \
        }                                                                                       \
    } while (0)

/* substring check */
#define CHECK_CONTAINS(hay, needle)                                                       \
    do {                                                                                  \
        const char *h_ = (hay), *n_ = (needle);                                           \
        if (!h_ || !strstr(h_, n_)) {                                                     \
            fprintf(stderr, "  %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
                    h_ ? h_ : "(null)", n_);                                              \
            test_failed_ = 1;                                                             \
        }                                                                                 \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                  \
    do {                                                                                       \
        double a_ = (double)(a), b_ = (double)(b);                                             \
        if (!(fabs(a_ - b_) <= (tol))) {                                                       \
            fprintf(stderr, "  %s:%d: |%s - %s| <= %g failed: %.9g vs %.9g\n", __FILE__, __LINE__, \
                    #a, #b, (double)(tol), a_, b_);                                            \
            test_failed_ = 1;                                                                  \
        }                                                                                      \
    } while (0)

/* Stop the current test early: it counts as failed. */
#define REQUIRE(c)                                                                 \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "  %s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #c); \
            test_failed_ = 1;                                                      \
            return;                                                                \
        }                                                                          \
    } while (0)

/* Skip the current test, saying why. */
#define TEST_SKIP(...)                          \
    do {                                        \
        fprintf(stderr, "  skipped: ");         \
        fprintf(stderr, __VA_ARGS__);           \
        fprintf(stderr, "\n");                  \
        test_skipped_ = 1;                      \
        return;                                 \
    } while (0)

#define TEST_RUN(fn)                                              \
    do {                                                          \
        test_failed_ = 0;                                         \
        test_skipped_ = 0;                                        \
        fprintf(stderr, "%s ...\n", #fn);                         \
        fn();                                                     \
        if (test_failed_) {                                       \
            test_n_fail_++;                                       \
            fprintf(stderr, "FAIL %s\n", #fn);                    \
        } else if (test_skipped_) {                               \
            test_n_skip_++;                                       \
            fprintf(stderr, "SKIP %s\n", #fn);                    \
        } else {                                                  \
            test_n_pass_++;                                       \
        }                                                         \
    } while (0)

#define TEST_END()                                                                 \
    do {                                                                           \
        printf("%s: %d passed, %d failed, %d skipped\n", __FILE__, test_n_pass_,   \
               test_n_fail_, test_n_skip_);                                        \
        return test_n_fail_ ? 1 : 0;                                               \
    } while (0)

/* Path of the repository's test data, relative to the repo root (tests run from there). */
#define TEST_DATA(rel) ("tests/data/" rel)

#endif
