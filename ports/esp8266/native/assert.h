/* Stands in for picolibc's <assert.h> in native ESP8266 builds (first on the include path):
 * picolibc declares __assert(const char *, const char *, int), which clashes with the
 * __assert(const char *file, int line, const char *expr) that MicroPython's ports/esp8266/main.c
 * defines. This one declares main.c's, and nothing else. */
#ifndef WORKSHOP_ASSERT_H
#define WORKSHOP_ASSERT_H
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
void __assert(const char *file, int line, const char *expr);
#define assert(e) ((e) ? (void)0 : __assert(__FILE__, __LINE__, #e))
#endif
#endif
