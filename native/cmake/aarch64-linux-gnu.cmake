# Cross-compile for 64-bit ARM Linux with Debian's GNU toolchain (apt: g++-aarch64-linux-gnu).
#   cmake -S . -B build/native-aarch64 -DCMAKE_TOOLCHAIN_FILE=native/cmake/aarch64-linux-gnu.cmake
# Run the result under qemu-user: qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu cortex-a72 ...
# The target flags (-march=armv8-a -mno-outline-atomics, dotprod per file) come from
# CMakeLists.txt, which keys them on CMAKE_SYSTEM_PROCESSOR set here.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(SHELFRANK_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${SHELFRANK_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${SHELFRANK_CROSS_TRIPLE}-g++)

# Debian installs the target's headers and libraries under /usr/aarch64-linux-gnu.
set(CMAKE_FIND_ROOT_PATH /usr/${SHELFRANK_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Lets CMake run target programs (try_run, ctest) through qemu when it is installed.
find_program(SHELFRANK_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(SHELFRANK_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${SHELFRANK_QEMU_AARCH64} -L /usr/${SHELFRANK_CROSS_TRIPLE})
endif()
