// Keeps the library within the manylinux_2_28 baseline (libstdc++ <= GLIBCXX_3.4.24).
//
// GCC 12's allocator calls std::__throw_bad_array_new_length() (GLIBCXX_3.4.29)
// whenever a std::vector grows; a local, hidden definition resolves that call
// inside this library instead of binding it to a new libstdc++. It throws what
// libstdc++'s own definition throws.
#include <new>

namespace std {
[[noreturn]] __attribute__((visibility("hidden"))) void __throw_bad_array_new_length() {
  throw std::bad_array_new_length();
}
}  // namespace std
