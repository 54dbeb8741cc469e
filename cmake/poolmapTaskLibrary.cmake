# poolmap_add_task_library(NAME SOURCES...)
#
# Builds lib<NAME>.so, a task library: the POOLMAP_TASK (and POOLMAP_WORKER_INIT) registrations in
# SOURCES, for `poolmap-worker --tasks lib<NAME>.so`. It is an ordinary shared library, so a
# program may also link it to run the same tasks in embedded mode. It compiles as C++20 and links
# poolmap::proto (poolmap::Task, POOLMAP_TASK, Cereal), all it needs; add more with
# target_link_libraries(NAME ...) as usual.
#
# Installed with the package (find_package(poolmap) defines it) and used by poolmap's own build.
function(poolmap_add_task_library name)
  if(NOT ARGN)
    message(FATAL_ERROR "poolmap_add_task_library(${name}): no source files given")
  endif()
  add_library(${name} SHARED ${ARGN})
  target_link_libraries(${name} PUBLIC poolmap::proto)
  target_compile_features(${name} PUBLIC cxx_std_20)
endfunction()
