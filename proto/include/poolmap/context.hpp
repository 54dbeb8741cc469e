// poolmap::Context: the messaging context that sockets are made in.
//
// An in-process broker and client talk over inproc:// endpoints, which only work between sockets
// of the same context: create one Context and hand it to both. Copies share the same context; it
// is destroyed with the last copy, after every socket made in it is closed.
//
// Thread-safety: copies may be used from any thread.
#pragma once

#include <memory>

namespace poolmap {

class Context {
 public:
  Context();  // a new context with one I/O thread

  class Impl;  // defined internally; holds the ZeroMQ context
  Impl& impl() const noexcept { return *impl_; }

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace poolmap
