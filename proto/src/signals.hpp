// Internal (not installed): signal handling for poolmap's programs (never used by the libraries).
//
// A SignalWaiter blocks SIGINT, SIGTERM, SIGHUP and SIGUSR1 in the calling thread (so in every
// thread started after it) and waits for them in a thread of its own. Create it first in main(),
// before any other thread exists, then say what a signal does with on_signal(): stopping a daemon
// is then an ordinary thread-safe call such as Broker::stop(), made from the waiting thread.
// SIGUSR1 (a broker of a pair hands over to its peer) reaches the action like the others: an action
// with no use for it must return without doing anything, so that it never stops a program.
#pragma once

#include <csignal>
#include <functional>
#include <mutex>
#include <thread>

namespace poolmap::detail {

class SignalWaiter {
 public:
  SignalWaiter();
  ~SignalWaiter();  // wakes and joins the waiting thread
  SignalWaiter(const SignalWaiter&) = delete;
  SignalWaiter& operator=(const SignalWaiter&) = delete;

  // Sets what a signal does (replacing the previous action; nullptr = nothing). If SIGINT or
  // SIGTERM arrived before, `action` is called at once with that signal (a SIGHUP or SIGUSR1 that
  // arrived with no action set is gone). Thread-safe.
  void on_signal(std::function<void(int)> action);

 private:
  std::mutex mutex_;  // guards action_ and stop_signal_
  std::function<void(int)> action_;
  int stop_signal_ = 0;  // the first SIGINT/SIGTERM received
  sigset_t set_{};
  std::thread thread_;
};

}  // namespace poolmap::detail
