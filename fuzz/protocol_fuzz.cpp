// Fuzz target: the frame parser and every message header, as a peer's socket delivers them.
//
// Input layout (see fuzz_support.hpp; seeds from make_seeds.cpp):
//   byte 0            length of the signature frame (low 4 bits: 0..15, so wrong sizes are tried too)
//   next N bytes      frame 0, the signature, given to proto::parse_signature
//   the rest          frame 1, the header, decoded as the struct of the parsed command
//
// Properties checked, beyond "no crash, no leak, no undefined behaviour":
//   - a signature that parses is exactly signature_frame() of its command (4 bytes), or of its
//     command and epoch (12 bytes, a broker of a pair); one that does not is kMalformed (wrong
//     size) or kBadVersion;
//   - decoding allocates within the bound of fuzz_support.hpp, whatever the size fields say;
//   - a header that decodes re-encodes to the very same bytes (the encoding is canonical: nothing
//     is accepted that the encoder would not write), and every field can be read;
//   - a header that does not decode is kMalformed.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "poolmap/protocol.hpp"

namespace proto = poolmap::proto;
using poolmap::Bytes;
using poolmap::ErrorCode;
using poolmap::fuzz::require;

namespace {

template <class Header>
void check_header(const Bytes& frame) {
  auto decoded =
      poolmap::fuzz::bounded_allocation("header", frame.size(), [&] { return proto::decode<Header>(frame); });
  if (!decoded.is_ok()) {
    require(decoded.status().code() == ErrorCode::kMalformed, "a header that does not decode is kMalformed");
    return;
  }
  (void)poolmap::fuzz::touch(decoded.value());
  require(proto::encode(decoded.value()) == frame, "a decoded header re-encodes to the same bytes");
}

void check_message(proto::Command command, const Bytes& header) {
  using C = proto::Command;
  switch (command) {
    case C::kHello: return check_header<proto::Hello>(header);
    case C::kSubmit: return check_header<proto::Submit>(header);
    case C::kCancel: return check_header<proto::Cancel>(header);
    case C::kReject: return check_header<proto::Reject>(header);
    case C::kContext: return check_header<proto::ContextHeader>(header);
    case C::kWelcome: return check_header<proto::Welcome>(header);
    case C::kResult: return check_header<proto::ClientResult>(header);
    case C::kStatusReply: return check_header<proto::StatusReply>(header);
    case C::kError: return check_header<proto::ErrorReply>(header);
    case C::kStarted: return check_header<proto::Started>(header);
    case C::kChunkProgress: return check_header<proto::ChunkProgress>(header);
    case C::kReady: return check_header<proto::Ready>(header);
    case C::kWorkerResult: return check_header<proto::WorkerResult>(header);
    case C::kWorkerExited: return check_header<proto::WorkerExited>(header);
    case C::kWorkerProgress: return check_header<proto::WorkerProgress>(header);
    case C::kCredit: return check_header<proto::Credit>(header);
    case C::kTask: return check_header<proto::TaskHeader>(header);
    case C::kAbandon: return check_header<proto::Abandon>(header);
    case C::kPeerState: return check_header<proto::PeerState>(header);
    case C::kStatusRequest:
    case C::kHeartbeat:
    case C::kDisconnect:
    case C::kPassive:
      return;  // no header struct
  }
  // An unknown command byte: the broker answers kUnknownCommand without decoding anything. The
  // structs that only travel inside others are decoded on their own here, so that each one is
  // fuzzed directly too.
  switch (static_cast<std::uint8_t>(command) % 4) {
    case 0: return check_header<proto::Outcome>(header);
    case 1: return check_header<proto::TaskInfo>(header);
    case 2: return check_header<proto::JobInfo>(header);
    default: return check_header<proto::WorkerInfo>(header);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  poolmap::fuzz::install_allocation_hooks();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  poolmap::fuzz::FuzzInput input(data, size);
  const std::size_t signature_size = input.take_u8() & 15U;
  const Bytes signature = input.take(signature_size);
  const Bytes header = input.rest();

  const auto command = proto::parse_signature(signature);
  if (!command.is_ok()) {
    const ErrorCode code = command.status().code();
    require(code == (signature.size() == 4 || signature.size() == 12 ? ErrorCode::kBadVersion : ErrorCode::kMalformed),
            "a bad signature frame is kBadVersion (4 or 12 bytes) or kMalformed (any other size)");
    return 0;
  }
  if (signature.size() == 12) {
    const auto expected = proto::signature_frame(command.value(), proto::epoch_of(signature));
    require(Bytes(expected.begin(), expected.end()) == signature, "a parsed signature is signature_frame(command, epoch)");
  } else {
    const auto expected = proto::signature_frame(command.value());
    require(Bytes(expected.begin(), expected.end()) == signature, "a parsed signature is signature_frame(command)");
    require(proto::epoch_of(signature) == 0, "a 4-byte signature has epoch 0");
  }
  check_message(command.value(), header);
  return 0;
}
