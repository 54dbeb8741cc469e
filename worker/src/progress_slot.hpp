// Internal: the 8 bytes a worker process shares with its supervisor to say which chunk it runs.
//
// The supervisor creates one slot per child (a memfd, inherited under the number given in
// POOLMAP_PROGRESS_FD) and reads it after the child dies: the ticket found there is the chunk that
// was running, the one to blame for a crash. The child writes the ticket before running a chunk
// and 0 after. No message is sent for it, so it costs nothing on the hot path, and it is exact even
// when the crash report overtakes the child's last result on its way to the broker.
#pragma once

#include <atomic>
#include <cstdint>

namespace poolmap::detail {

inline constexpr const char* kProgressFdVariable = "POOLMAP_PROGRESS_FD";

class ProgressSlot {
 public:
  // Supervisor side: a new slot. valid() is false where memfd_create or mmap fail.
  static ProgressSlot create();
  // Child side: the slot inherited from the supervisor (POOLMAP_PROGRESS_FD), or an invalid one.
  static ProgressSlot inherited();

  ProgressSlot() = default;
  ProgressSlot(ProgressSlot&& other) noexcept;
  ProgressSlot& operator=(ProgressSlot&& other) noexcept;
  ProgressSlot(const ProgressSlot&) = delete;
  ProgressSlot& operator=(const ProgressSlot&) = delete;
  ~ProgressSlot();

  bool valid() const noexcept { return value_ != nullptr; }
  int fd() const noexcept { return fd_; }
  void store(std::uint64_t ticket) noexcept;
  std::uint64_t load() const noexcept;

 private:
  int fd_ = -1;
  std::uint64_t* value_ = nullptr;  // mapped, shared between the two processes
};

}  // namespace poolmap::detail
