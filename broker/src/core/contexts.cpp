#include "contexts.hpp"

#include <algorithm>

namespace poolmap::detail {

ClientContexts::State ClientContexts::keep(std::uint64_t hash, zmq::message_t& payload, Clock::time_point now) {
  if (const auto held = held_.find(hash); held != held_.end()) {
    held->second.idle_since = now;
    return State::kHeld;
  }
  const auto size = static_cast<std::int64_t>(payload.size());
  auto refuse = [&](bool for_ever) {
    if (refused_.size() >= kRefusalsKept) refused_.clear();
    refused_[hash] = for_ever;
    return for_ever ? State::kRefusedForEver : State::kRefusedForNow;
  };
  if (size > quota_.bytes) return refuse(true);
  auto fits = [&] { return held_.size() < quota_.contexts && bytes_ + size <= quota_.bytes; };
  while (!fits()) {  // free the context unused for longest, if any
    auto oldest = held_.end();
    for (auto it = held_.begin(); it != held_.end(); ++it) {
      if (it->second.users == 0 && (oldest == held_.end() || it->second.idle_since < oldest->second.idle_since)) {
        oldest = it;
      }
    }
    if (oldest == held_.end()) return refuse(false);
    bytes_ -= static_cast<std::int64_t>(oldest->second.payload.size());
    held_.erase(oldest);
  }
  Context& kept = held_[hash];
  kept.payload = std::move(payload);
  kept.idle_since = now;
  bytes_ += size;
  refused_.erase(hash);
  return State::kHeld;
}

ClientContexts::State ClientContexts::state(std::uint64_t hash) const {
  if (held_.contains(hash)) return State::kHeld;
  const auto refused = refused_.find(hash);
  if (refused == refused_.end()) return State::kMissing;
  return refused->second ? State::kRefusedForEver : State::kRefusedForNow;
}

void ClientContexts::use(std::uint64_t hash) {
  if (const auto held = held_.find(hash); held != held_.end()) ++held->second.users;
}

void ClientContexts::release(std::uint64_t hash, Clock::time_point now) {
  const auto held = held_.find(hash);
  if (held == held_.end() || held->second.users == 0) return;
  if (--held->second.users == 0) held->second.idle_since = now;
}

zmq::message_t* ClientContexts::payload(std::uint64_t hash) {
  const auto held = held_.find(hash);
  return held == held_.end() ? nullptr : &held->second.payload;
}

void ClientContexts::expire(Clock::time_point now, Clock::duration idle) {
  std::erase_if(held_, [&](const auto& entry) {
    const bool unused = entry.second.users == 0 && now - entry.second.idle_since >= idle;
    if (unused) bytes_ -= static_cast<std::int64_t>(entry.second.payload.size());
    return unused;
  });
}

std::size_t ClientContexts::users(std::uint64_t hash) const {
  const auto held = held_.find(hash);
  return held == held_.end() ? 0 : held->second.users;
}

}  // namespace poolmap::detail
