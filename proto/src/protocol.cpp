#include "poolmap/protocol.hpp"

namespace poolmap::proto {

std::array<std::byte, 4> signature_frame(Command command) noexcept {
  return {kTag0, kTag1, std::byte{kVersion}, std::byte{static_cast<std::uint8_t>(command)}};
}

Result<Command> parse_signature(std::span<const std::byte> frame) {
  if (frame.size() != 4) {
    return Status(ErrorCode::kMalformed,
                  "signature frame has " + std::to_string(frame.size()) + " bytes, expected 4");
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
