#include "progress_slot.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

namespace poolmap::detail {

namespace {
std::uint64_t* map_slot(int fd) {
  void* mapped = ::mmap(nullptr, sizeof(std::uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return mapped == MAP_FAILED ? nullptr : static_cast<std::uint64_t*>(mapped);
}
}  // namespace

ProgressSlot ProgressSlot::create() {
  ProgressSlot slot;
  slot.fd_ = ::memfd_create("poolmap-progress", MFD_CLOEXEC);
  if (slot.fd_ < 0) return slot;
  if (::ftruncate(slot.fd_, sizeof(std::uint64_t)) != 0) return slot;
  slot.value_ = map_slot(slot.fd_);
  return slot;
}

ProgressSlot ProgressSlot::inherited() {
  ProgressSlot slot;
  const char* text = std::getenv(kProgressFdVariable);
  if (text == nullptr) return slot;
  char* end = nullptr;
  const long fd = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || fd < 0) return slot;
  slot.fd_ = static_cast<int>(fd);
  slot.value_ = map_slot(slot.fd_);
  return slot;
}

ProgressSlot::ProgressSlot(ProgressSlot&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), value_(std::exchange(other.value_, nullptr)) {}

ProgressSlot& ProgressSlot::operator=(ProgressSlot&& other) noexcept {
  if (this != &other) {
    this->~ProgressSlot();
    fd_ = std::exchange(other.fd_, -1);
    value_ = std::exchange(other.value_, nullptr);
  }
  return *this;
}

ProgressSlot::~ProgressSlot() {
  if (value_ != nullptr) ::munmap(value_, sizeof(std::uint64_t));
  if (fd_ >= 0) ::close(fd_);
}

void ProgressSlot::store(std::uint64_t ticket) noexcept {
  if (value_ != nullptr) std::atomic_ref<std::uint64_t>(*value_).store(ticket, std::memory_order_release);
}

std::uint64_t ProgressSlot::load() const noexcept {
  return value_ == nullptr ? 0 : std::atomic_ref<std::uint64_t>(*value_).load(std::memory_order_acquire);
}

}  // namespace poolmap::detail
