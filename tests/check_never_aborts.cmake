# Run by ctest (library_never_aborts): fails when the library users link refers
# to a function that ends the host program. The house rule is that surpool never
# exits or aborts; a live assert() (any build without NDEBUG, e.g. vendored with
# add_subdirectory() and no build type) would pull in __assert_fail.
#   cmake -DNM=<nm> -DLIB=<libsurpool.a> -P check_never_aborts.cmake
if(NOT NM OR NOT LIB)
    message(FATAL_ERROR "usage: cmake -DNM=<nm> -DLIB=<library> -P check_never_aborts.cmake")
endif()
execute_process(COMMAND ${NM} -u ${LIB} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} -u ${LIB} failed (${rc})")
endif()
string(REGEX MATCHALL
    "U (__assert_fail|__assert_perror_fail|__assert|abort|exit|_exit|_Exit|quick_exit)[\n@]"
    hits "${out}")
if(hits)
    list(REMOVE_DUPLICATES hits)
    string(REPLACE "\n" "" hits "${hits}")
    message(FATAL_ERROR "${LIB} can end the host program: it refers to ${hits}")
endif()
message(STATUS "${LIB}: no reference to abort, exit or assert")
