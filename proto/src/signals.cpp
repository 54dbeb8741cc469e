#include "signals.hpp"

#include <pthread.h>

namespace poolmap::detail {

namespace {
// SIGUSR2 tells the waiting thread to leave when the waiter is destroyed.
constexpr int kQuitSignal = SIGUSR2;
}  // namespace

SignalWaiter::SignalWaiter() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGHUP);
  sigaddset(&set_, SIGUSR1);
  sigaddset(&set_, kQuitSignal);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  thread_ = std::thread([this] {
    for (;;) {
      int signo = 0;
      if (sigwait(&set_, &signo) != 0) continue;
      if (signo == kQuitSignal) return;
      std::lock_guard lock(mutex_);
      if ((signo == SIGINT || signo == SIGTERM) && stop_signal_ == 0) stop_signal_ = signo;
      if (action_) action_(signo);
    }
  });
}

SignalWaiter::~SignalWaiter() {
  pthread_kill(thread_.native_handle(), kQuitSignal);
  thread_.join();
}

void SignalWaiter::on_signal(std::function<void(int)> action) {
  std::lock_guard lock(mutex_);
  action_ = std::move(action);
  if (action_ && stop_signal_ != 0) action_(stop_signal_);
}

}  // namespace poolmap::detail
