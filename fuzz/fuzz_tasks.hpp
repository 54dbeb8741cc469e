// The tasks the task-argument target runs (task_args_fuzz.cpp registers them), and the result
// types the result target decodes (results_fuzz.cpp). make_seeds.cpp encodes seeds for both.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "poolmap/task.hpp"

namespace poolmap::fuzz {

// ---- tasks (one argument, several arguments, tuples, containers, broadcast contexts) ----

inline constexpr Task<std::int64_t(std::int64_t)> square{"fuzz.square"};
inline constexpr Task<double(double)> halve{"fuzz.halve"};
inline constexpr Task<bool(bool)> negate{"fuzz.negate"};
inline constexpr Task<std::string(std::string)> upper{"fuzz.upper"};
inline constexpr Task<double(std::vector<double>)> sum{"fuzz.sum"};
inline constexpr Task<std::vector<std::string>(std::vector<std::string>)> reverse{"fuzz.reverse"};
inline constexpr Task<std::string(std::int32_t, std::string, bool)> describe{"fuzz.describe"};
using Record = std::tuple<std::uint8_t, std::string, std::vector<std::uint16_t>, std::array<std::int16_t, 3>>;
inline constexpr Task<std::uint64_t(Record)> weigh{"fuzz.weigh"};
inline constexpr Task<std::optional<std::string>(std::variant<std::int64_t, std::string, double>)> show{"fuzz.show"};
inline constexpr Task<std::pair<std::string, std::int64_t>(std::optional<std::pair<std::string, std::int64_t>>)> pick{
    "fuzz.pick"};
// With a broadcast context (Task::with): the first argument.
inline constexpr Task<double(std::vector<double>, std::uint32_t)> lookup{"fuzz.lookup"};
inline constexpr Task<std::string(std::string, std::string)> prefix{"fuzz.prefix"};
inline constexpr Task<std::int64_t(std::map<std::string, std::int64_t>, std::string)> price{"fuzz.price"};

// The fuzz input's first byte picks one of these (modulo the count).
inline constexpr std::array<std::string_view, 13> kTaskNames = {
    square.name(), halve.name(),  negate.name(), upper.name(),  sum.name(),    reverse.name(), describe.name(),
    weigh.name(),  show.name(),   pick.name(),   lookup.name(), prefix.name(), price.name()};

// ---- result types the client decodes ----

using ResultTypes = std::tuple<std::int64_t, double, bool, std::string, std::vector<double>, std::vector<std::string>,
                               std::tuple<std::int32_t, std::string, std::vector<std::uint8_t>>,
                               std::optional<std::string>, std::variant<std::int64_t, std::string>,
                               std::pair<std::string, std::vector<std::int64_t>>, std::map<std::string, std::int64_t>,
                               std::array<std::uint16_t, 4>>;

}  // namespace poolmap::fuzz
