// PII redaction: email addresses, IPv4 and IPv6 addresses and phone numbers are replaced by typed
// placeholders. Hand-written scanners, tuned against false positives; the rules:
// - email: local part [A-Za-z0-9._%+-]+ (not starting with '.'), '@', two or more domain labels
//   [A-Za-z0-9-]+ (not starting or ending with '-') joined by '.', the last all letters, >= 2
//   long. A trailing '.' (end of sentence) is not part of the address.
// - IPv4: four decimal octets 0..255 without leading zeros, not touching a letter, digit or '.'
//   followed by a digit (so "1.2.3.4.5" and "v1.2.3.4" stay), and not after the word "version"
//   or "v" (so "version 1.2.3.4" stays). Octets with leading zeros (dates, versions) stay.
// - IPv6: eight groups of 1-4 hex digits joined by ':', or a "::" form with 2..7 groups, one of
//   them 3+ digits long ("fe80::1", "2001:db8::8a2e:370:7334", not "3::20"); not touching a
//   letter, digit, ':' or '.'.
//   "::1", times ("12:30:45") and MAC addresses (6 groups) stay. Embedded IPv4 tails stay.
// - phone: North American numbers with separators: "(555) 123-4567", "555-123-4567",
//   "555.123.4567", "555 123 4567", optionally after "+1" or "1" and a separator (one separator
//   kind between the groups); and international numbers: '+', a country code 1-3 digits (not
//   starting with 0), then two or more digit groups of 1-5 joined by single ' ', '-' or '.',
//   8..15 digits in all. Not touching a letter or digit. Bare digit runs ("5551234567"), 7-digit
//   local numbers ("555-1234") and dates ("2024-01-15") stay.
// Cost: one pass over the text plus a pass per '@'.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::curate {

enum class PiiType { email, ipv4, ipv6, phone };
const char* to_string(PiiType t);

struct PiiConfig {
  bool email = true, ipv4 = true, ipv6 = true, phone = true;
  std::string email_placeholder = "<EMAIL>";
  std::string ip_placeholder = "<IP_ADDRESS>";
  std::string phone_placeholder = "<PHONE_NUMBER>";
};

struct PiiMatch {
  size_t begin, end;  // bytes [begin, end) of the text
  PiiType type;
};

struct PiiCounts {
  int64_t email = 0, ipv4 = 0, ipv6 = 0, phone = 0;
  int64_t total() const { return email + ipv4 + ipv6 + phone; }
  PiiCounts& operator+=(const PiiCounts& o) {
    email += o.email, ipv4 += o.ipv4, ipv6 += o.ipv6, phone += o.phone;
    return *this;
  }
};

// The matches in `text`, sorted and non-overlapping (emails first, then IPv6, IPv4, phone).
void find_pii(std::string_view text, const PiiConfig& cfg, std::vector<PiiMatch>& matches);

// `text` with each match replaced by its placeholder; adds the matches to `counts`.
std::string redact_pii(std::string_view text, const PiiConfig& cfg, PiiCounts& counts);

}  // namespace kiln::curate
