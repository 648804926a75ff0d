# ONNX Runtime C/C++ headers for building the kernel.
#
# The onnxruntime wheel ships no headers, so they come from the npm package
# com.github.asus4.onnxruntime (it carries the official headers of one ORT
# release), pinned by version and SHA-256, and are cached outside the build
# folder so rebuilds and other checkouts need no download.
#
# Sources, first match wins:
#   1. SPATIALDROP_ORT_INCLUDE_DIR (CMake variable or environment variable):
#      a folder holding onnxruntime_c_api.h, onnxruntime_cxx_api.h and
#      onnxruntime_lite_custom_op.h (ONNX Runtime >= 1.17); nothing is fetched.
#   2. The cache: ${XDG_CACHE_HOME:-~/.cache}/spatialdrop-onnx/ort-headers-<version>.
#   3. SPATIALDROP_ORT_NPM_TARBALL (environment): a local copy of the npm tarball.
#   4. `npm pack` from the npm registry.
# Defines SPATIALDROP_ORT_INCLUDE_DIR_RESOLVED.

set(_ORT_NPM_PACKAGE "com.github.asus4.onnxruntime")
set(_ORT_NPM_VERSION "0.4.9")
set(_ORT_NPM_SHA256 "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d")
set(_ORT_HEADERS_IN_TARBALL
    "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers")
set(_ORT_REQUIRED_HEADERS
    onnxruntime_c_api.h onnxruntime_cxx_api.h onnxruntime_cxx_inline.h
    onnxruntime_lite_custom_op.h onnxruntime_float16.h)

set(_ORT_HOW_TO_PROVIDE "
  The native kernel needs the ONNX Runtime C/C++ headers (the onnxruntime wheel
  has none). Install npm (they come from `npm pack ${_ORT_NPM_PACKAGE}@${_ORT_NPM_VERSION}`),
  or set SPATIALDROP_ORT_INCLUDE_DIR to a folder with onnxruntime_c_api.h,
  onnxruntime_cxx_api.h and onnxruntime_lite_custom_op.h (ONNX Runtime >= 1.17),
  or SPATIALDROP_ORT_NPM_TARBALL to a downloaded
  ${_ORT_NPM_PACKAGE}-${_ORT_NPM_VERSION}.tgz (SHA-256 ${_ORT_NPM_SHA256}).
")

function(_spatialdrop_headers_complete dir out_var)
  set(complete TRUE)
  foreach(header IN LISTS _ORT_REQUIRED_HEADERS)
    if(NOT EXISTS "${dir}/${header}")
      set(complete FALSE)
    endif()
  endforeach()
  set(${out_var} ${complete} PARENT_SCOPE)
endfunction()

function(_spatialdrop_cache_root out_var)
  if(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
    set(root "$ENV{XDG_CACHE_HOME}")
  elseif(DEFINED ENV{HOME} AND NOT "$ENV{HOME}" STREQUAL "")
    set(root "$ENV{HOME}/.cache")
  elseif(DEFINED ENV{LOCALAPPDATA})
    set(root "$ENV{LOCALAPPDATA}")
  else()
    set(root "${CMAKE_BINARY_DIR}/cache")
  endif()
  set(${out_var} "${root}/spatialdrop-onnx" PARENT_SCOPE)
endfunction()

# Gets the tarball into `work_dir`; sets `out_var` to its path.
function(_spatialdrop_get_tarball work_dir out_var)
  if(DEFINED ENV{SPATIALDROP_ORT_NPM_TARBALL} AND NOT "$ENV{SPATIALDROP_ORT_NPM_TARBALL}" STREQUAL "")
    set(${out_var} "$ENV{SPATIALDROP_ORT_NPM_TARBALL}" PARENT_SCOPE)
    return()
  endif()
  find_program(SPATIALDROP_NPM NAMES npm npm.cmd)
  if(NOT SPATIALDROP_NPM)
    message(FATAL_ERROR "npm was not found.${_ORT_HOW_TO_PROVIDE}")
  endif()
  execute_process(COMMAND "${SPATIALDROP_NPM}" --version RESULT_VARIABLE npm_works
                  OUTPUT_QUIET ERROR_QUIET TIMEOUT 120)
  if(NOT npm_works EQUAL 0)
    message(FATAL_ERROR "npm (${SPATIALDROP_NPM}) does not run.${_ORT_HOW_TO_PROVIDE}")
  endif()
  message(STATUS "Fetching ONNX Runtime headers: npm pack ${_ORT_NPM_PACKAGE}@${_ORT_NPM_VERSION}")
  # A private npm cache, deleted afterwards, so the 150 MB tarball is not kept twice.
  execute_process(
    COMMAND "${SPATIALDROP_NPM}" pack "${_ORT_NPM_PACKAGE}@${_ORT_NPM_VERSION}"
            --pack-destination "${work_dir}" --cache "${work_dir}/npm-cache"
            --silent --no-audit --no-fund
    WORKING_DIRECTORY "${work_dir}"
    RESULT_VARIABLE npm_result
    OUTPUT_VARIABLE npm_output
    ERROR_VARIABLE npm_error
    TIMEOUT 1800)
  set(tarball "${work_dir}/${_ORT_NPM_PACKAGE}-${_ORT_NPM_VERSION}.tgz")
  if(NOT npm_result EQUAL 0 OR NOT EXISTS "${tarball}")
    string(STRIP "${npm_error}" npm_error)
    string(REGEX REPLACE "\n.*" "" npm_error "${npm_error}")  # its first line is enough
    message(FATAL_ERROR
      "`npm pack` failed (${npm_result}: ${npm_error}).${_ORT_HOW_TO_PROVIDE}")
  endif()
  file(REMOVE_RECURSE "${work_dir}/npm-cache")
  set(${out_var} "${tarball}" PARENT_SCOPE)
endfunction()

function(spatialdrop_resolve_ort_headers)
  # 1. An explicit folder.
  set(override "${SPATIALDROP_ORT_INCLUDE_DIR}")
  if("${override}" STREQUAL "" AND DEFINED ENV{SPATIALDROP_ORT_INCLUDE_DIR})
    set(override "$ENV{SPATIALDROP_ORT_INCLUDE_DIR}")
  endif()
  if(NOT "${override}" STREQUAL "")
    _spatialdrop_headers_complete("${override}" complete)
    if(NOT complete)
      message(FATAL_ERROR
        "SPATIALDROP_ORT_INCLUDE_DIR=${override} lacks one of: ${_ORT_REQUIRED_HEADERS}")
    endif()
    message(STATUS "ONNX Runtime headers: ${override} (SPATIALDROP_ORT_INCLUDE_DIR)")
    set(SPATIALDROP_ORT_INCLUDE_DIR_RESOLVED "${override}" PARENT_SCOPE)
    return()
  endif()

  # 2. The cache; the lock keeps concurrent builds from fetching twice.
  _spatialdrop_cache_root(cache_root)
  set(cache_dir "${cache_root}/ort-headers-${_ORT_NPM_VERSION}")
  file(MAKE_DIRECTORY "${cache_root}")
  file(LOCK "${cache_root}/ort-headers-${_ORT_NPM_VERSION}.lock" GUARD FUNCTION TIMEOUT 1800)
  _spatialdrop_headers_complete("${cache_dir}" complete)
  if(complete AND EXISTS "${cache_dir}/SHA256")
    message(STATUS "ONNX Runtime headers: ${cache_dir} (cached)")
    set(SPATIALDROP_ORT_INCLUDE_DIR_RESOLVED "${cache_dir}" PARENT_SCOPE)
    return()
  endif()

  # 3./4. Fetch, verify, extract only the headers, then publish into the cache.
  set(work_dir "${CMAKE_BINARY_DIR}/ort-headers-download")
  file(REMOVE_RECURSE "${work_dir}")
  file(MAKE_DIRECTORY "${work_dir}")
  _spatialdrop_get_tarball("${work_dir}" tarball)
  file(SHA256 "${tarball}" actual_sha256)
  if(NOT actual_sha256 STREQUAL _ORT_NPM_SHA256)
    file(REMOVE_RECURSE "${work_dir}")
    message(FATAL_ERROR
      "${tarball} has SHA-256 ${actual_sha256}, expected ${_ORT_NPM_SHA256}: refusing to use it."
      "${_ORT_HOW_TO_PROVIDE}")
  endif()
  file(ARCHIVE_EXTRACT INPUT "${tarball}" DESTINATION "${work_dir}/extracted"
       PATTERNS "${_ORT_HEADERS_IN_TARBALL}/*.h")
  file(GLOB headers "${work_dir}/extracted/${_ORT_HEADERS_IN_TARBALL}/*.h")
  _spatialdrop_headers_complete("${work_dir}/extracted/${_ORT_HEADERS_IN_TARBALL}" complete)
  if(NOT complete)
    message(FATAL_ERROR "The tarball lacks the expected headers under ${_ORT_HEADERS_IN_TARBALL}")
  endif()
  file(REMOVE_RECURSE "${cache_dir}")
  file(MAKE_DIRECTORY "${cache_dir}")
  file(COPY ${headers} DESTINATION "${cache_dir}")
  # Written last: marks the cache entry complete.
  file(WRITE "${cache_dir}/SHA256" "${_ORT_NPM_SHA256}  ${_ORT_NPM_PACKAGE}-${_ORT_NPM_VERSION}.tgz\n")
  file(REMOVE_RECURSE "${work_dir}")
  message(STATUS "ONNX Runtime headers: ${cache_dir} (fetched)")
  set(SPATIALDROP_ORT_INCLUDE_DIR_RESOLVED "${cache_dir}" PARENT_SCOPE)
endfunction()
