/* The two glibc 2.38 symbols the bochscpu-python 0.4.0 wheel needs, for older glibc
 * (Debian 12 has 2.36): C23 strtoull/sscanf, which differ from the C99 ones only for "0b"
 * prefixes, which Bochs does not parse. Preloaded by check-kernels-emulated.sh. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

unsigned long long __isoc23_strtoull(const char *s, char **end, int base) {
    return strtoull(s, end, base);
}

int __isoc23_sscanf(const char *s, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = vsscanf(s, format, args);
    va_end(args);
    return n;
}
