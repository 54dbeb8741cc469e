#include "poolmap/protocol.hpp"

namespace poolmap::proto {

std::array<std::byte, 4> signature_frame(Command command) noexcept {
  return {kTag0, kTag1, std::byte{kVersion}, std::byte{static_cast<std::uint8_t>(command)}};
}

std::array<std::byte, 12> signature_frame(Command command, std::uint64_t epoch) noexcept {
  std::array<std::byte, 12> frame{kTag0, kTag1, std::byte{kVersion}, std::byte{static_cast<std::uint8_t>(command)}};
  for (std::size_t i = 0; i < 8; ++i) frame[4 + i] = std::byte{static_cast<std::uint8_t>(epoch >> (8 * i))};
  return frame;
}

std::uint64_t epoch_of(std::span<const std::byte> frame) noexcept {
  if (frame.size() != 12) return 0;
  std::uint64_t epoch = 0;
  for (std::size_t i = 0; i < 8; ++i) epoch |= static_cast<std::uint64_t>(frame[4 + i]) << (8 * i);
  return epoch;
}

Result<Command> parse_signature(std::span<const std::byte> frame) {
  if (frame.size() != 4 && frame.size() != 12) {
    return Status(ErrorCode::kMalformed,
                  "signature frame has " + std::to_string(frame.size()) + " bytes, expected 4 or 12");
  }
  if (frame[0] != kTag0 || frame[1] != kTag1) {
    return Status(ErrorCode::kBadVersion, "not a poolmap message (bad protocol tag)");
  }
  if (frame[2] != std::byte{kVersion}) {
    return Status(ErrorCode::kBadVersion, "protocol version " + std::to_string(static_cast<int>(frame[2])) +
                                              " is not supported (this peer speaks version " +
                                              std::to_string(kVersion) + ")");
  }
  return static_cast<Command>(frame[3]);
}

}  // namespace poolmap::proto
