#include "kiln/data/pii.h"

#include <cstring>

namespace kiln::curate {
namespace {

inline bool digit(char c) {
  return c >= '0' && c <= '9';
}
inline bool alpha(char c) {
  return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
inline bool alnum(char c) {
  return digit(c) || alpha(c);
}
inline bool hex(char c) {
  return digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}
inline bool email_local(char c) {
  return alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

// Email around the '@' at `at`: [begin, end) or false.
bool match_email(std::string_view s, size_t at, size_t& begin, size_t& end) {
  size_t b = at;
  while (b > 0 && email_local(s[b - 1])) --b;
  while (b < at && s[b] == '.') ++b;  // a local part does not start with '.'
  if (b == at) return false;
  size_t e = at + 1;
  while (e < s.size() && (alnum(s[e]) || s[e] == '-' || s[e] == '.')) ++e;
  while (e > at + 1 && (s[e - 1] == '.' || s[e - 1] == '-')) --e;
  // Validate the labels.
  std::string_view domain = s.substr(at + 1, e - at - 1);
  int labels = 0;
  size_t start = 0;
  std::string_view last;
  while (start <= domain.size()) {
    size_t dot = domain.find('.', start);
    if (dot == std::string_view::npos) dot = domain.size();
    std::string_view label = domain.substr(start, dot - start);
    if (label.empty() || label.front() == '-' || label.back() == '-') return false;
    ++labels, last = label;
    start = dot + 1;
  }
  if (labels < 2 || last.size() < 2) return false;
  for (char c : last)
    if (!alpha(c)) return false;
  begin = b, end = e;
  return true;
}

// True if the word before position i (skipping one space) is "version" or "v" (any case).
bool after_version_word(std::string_view s, size_t i) {
  size_t e = i;
  if (e > 0 && s[e - 1] == ' ') --e;
  size_t b = e;
  while (b > 0 && alpha(s[b - 1])) --b;
  std::string w(s.substr(b, e - b));
  for (char& c : w) c = char(c | 0x20);
  return w == "version" || w == "v";
}

// The character after a number must not continue it: no letter or digit, and no '.' or '-'
// followed by a digit.
bool clean_end(std::string_view s, size_t e) {
  if (e >= s.size()) return true;
  if (alnum(s[e])) return false;
  if ((s[e] == '.' || s[e] == '-') && e + 1 < s.size() && digit(s[e + 1])) return false;
  return true;
}

bool match_ipv4(std::string_view s, size_t i, size_t& end) {
  size_t p = i;
  for (int octet = 0; octet < 4; ++octet) {
    if (octet > 0) {
      if (p >= s.size() || s[p] != '.') return false;
      ++p;
    }
    size_t b = p;
    int v = 0;
    while (p < s.size() && digit(s[p]) && p - b < 3) v = v * 10 + (s[p++] - '0');
    size_t len = p - b;
    if (len == 0 || v > 255 || (len > 1 && s[b] == '0')) return false;
  }
  if (!clean_end(s, p) || after_version_word(s, i)) return false;
  end = p;
  return true;
}

bool match_ipv6(std::string_view s, size_t i, size_t& end) {
  size_t p = i;
  while (p < s.size() && (hex(s[p]) || s[p] == ':')) ++p;
  if (p < s.size() && (alnum(s[p]) || s[p] == '.' || s[p] == '_')) return false;
  std::string_view run = s.substr(i, p - i);
  if (run.size() >= 2 && run.back() == ':' && run[run.size() - 2] != ':') return false;
  size_t dc = run.find("::");
  if (dc != std::string_view::npos && run.find("::", dc + 1) != std::string_view::npos)
    return false;
  int groups = 0;
  bool long_group = false;
  for (size_t k = 0; k < run.size();) {
    if (run[k] == ':') {
      ++k;
      continue;
    }
    size_t b = k;
    while (k < run.size() && hex(run[k])) ++k;
    if (k - b > 4) return false;
    long_group |= k - b >= 3;
    ++groups;
  }
  if (run.find(":::") != std::string_view::npos) return false;
  // No lone ':' at either end ("::" may start or end the address).
  if ((run.front() == ':' && run.substr(0, 2) != "::") ||
      (run.back() == ':' && run.substr(run.size() - 2) != "::"))
    return false;
  // A "::" form needs a group of 3+ digits ("fe80::1"), so "3::20" or "a::b" stay.
  bool ok = dc == std::string_view::npos ? groups == 8 : (groups >= 2 && groups <= 7 && long_group);
  if (!ok) return false;
  end = p;
  return true;
}

// Reads exactly n digits at p.
bool digits(std::string_view s, size_t& p, int n) {
  for (int k = 0; k < n; ++k, ++p)
    if (p >= s.size() || !digit(s[p])) return false;
  return true;
}
inline bool phone_sep(char c) {
  return c == ' ' || c == '-' || c == '.';
}

// North American: [+1 |1 ](ddd) ddd-dddd | ddd?ddd?dddd with one separator kind.
bool match_nanp(std::string_view s, size_t i, size_t& end) {
  size_t p = i;
  if (p < s.size() && s[p] == '+') {
    if (p + 2 >= s.size() || s[p + 1] != '1' || !phone_sep(s[p + 2])) return false;
    p += 3;
  } else if (p + 1 < s.size() && s[p] == '1' && phone_sep(s[p + 1]) && p + 2 < s.size() &&
             (s[p + 2] == '(' || digit(s[p + 2]))) {
    size_t q = p + 2;  // "1 555 123 4567": only if the rest is a full number
    size_t e;
    if (match_nanp(s, q, e)) return end = e, true;
    return false;
  }
  char sep;
  if (p < s.size() && s[p] == '(') {
    ++p;
    if (!digits(s, p, 3) || p >= s.size() || s[p] != ')') return false;
    ++p;
    if (p < s.size() && s[p] == ' ') ++p;
    if (!digits(s, p, 3) || p >= s.size() || !phone_sep(s[p])) return false;
    sep = s[p++];
  } else {
    if (!digits(s, p, 3) || p >= s.size() || !phone_sep(s[p])) return false;
    sep = s[p++];
    if (!digits(s, p, 3) || p >= s.size() || s[p] != sep) return false;
    ++p;
  }
  (void)sep;
  if (!digits(s, p, 4) || !clean_end(s, p)) return false;
  end = p;
  return true;
}

// International: +CC then >= 2 groups of 1-5 digits joined by single separators, 8..15 digits.
bool match_international(std::string_view s, size_t i, size_t& end) {
  size_t p = i + 1;
  if (p >= s.size() || !digit(s[p]) || s[p] == '0') return false;
  int total = 0, cc = 0;
  while (p < s.size() && digit(s[p]) && cc < 4) ++p, ++cc;
  if (cc > 3) return false;
  total = cc;
  int groups = 0;
  size_t last_end = p;
  while (p + 1 < s.size() && phone_sep(s[p]) && digit(s[p + 1])) {
    size_t q = p + 1;
    int len = 0;
    while (q < s.size() && digit(s[q])) ++q, ++len;
    if (len > 5) return false;
    total += len, ++groups;
    p = last_end = q;
  }
  if (groups < 2 || total < 8 || total > 15 || !clean_end(s, last_end)) return false;
  end = last_end;
  return true;
}

bool phone_start_ok(std::string_view s, size_t i) {
  if (i == 0) return true;
  char c = s[i - 1];
  return !alnum(c) && c != '.' && c != '-' && c != '/' && c != '+' && c != '_';
}

}  // namespace

const char* to_string(PiiType t) {
  switch (t) {
    case PiiType::email:
      return "email";
    case PiiType::ipv4:
      return "ipv4";
    case PiiType::ipv6:
      return "ipv6";
    case PiiType::phone:
      return "phone";
  }
  return "?";
}

void find_pii(std::string_view s, const PiiConfig& cfg, std::vector<PiiMatch>& out) {
  out.clear();
  std::vector<PiiMatch> emails;
  if (cfg.email) {
    for (size_t at = s.find('@'); at != std::string_view::npos; at = s.find('@', at + 1)) {
      size_t b, e;
      if ((emails.empty() || at >= emails.back().end) && match_email(s, at, b, e) &&
          (emails.empty() || b >= emails.back().end))
        emails.push_back({b, e, PiiType::email});
    }
  }
  size_t next_email = 0;
  for (size_t i = 0; i < s.size();) {
    if (next_email < emails.size() && i >= emails[next_email].begin) {
      out.push_back(emails[next_email]);
      i = emails[next_email++].end;
      continue;
    }
    size_t limit = next_email < emails.size() ? emails[next_email].begin : s.size();
    char c = s[i];
    char prev = i > 0 ? s[i - 1] : ' ';
    size_t e = 0;
    bool found = false;
    if (cfg.ipv6 && (hex(c) || c == ':') && !alnum(prev) && prev != ':' && prev != '.' &&
        prev != '_' && match_ipv6(s, i, e)) {
      found = e <= limit;
      if (found) out.push_back({i, e, PiiType::ipv6});
    }
    if (!found && cfg.ipv4 && digit(c) && !alnum(prev) && prev != '.' && match_ipv4(s, i, e) &&
        e <= limit) {
      found = true;
      out.push_back({i, e, PiiType::ipv4});
    }
    if (!found && cfg.phone && (digit(c) || c == '(' || c == '+') && phone_start_ok(s, i)) {
      if ((match_nanp(s, i, e) || (c == '+' && match_international(s, i, e))) && e <= limit) {
        found = true;
        out.push_back({i, e, PiiType::phone});
      }
    }
    if (found) {
      i = e;
      continue;
    }
    // Skip the rest of an alphanumeric word: no match starts inside one.
    if (alnum(c)) {
      ++i;
      while (i < limit && alnum(s[i])) ++i;
    } else {
      ++i;
    }
  }
}

std::string redact_pii(std::string_view text, const PiiConfig& cfg, PiiCounts& counts) {
  thread_local std::vector<PiiMatch> matches;
  find_pii(text, cfg, matches);
  if (matches.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (auto& m : matches) {
    out.append(text.substr(pos, m.begin - pos));
    switch (m.type) {
      case PiiType::email:
        out += cfg.email_placeholder, ++counts.email;
        break;
      case PiiType::ipv4:
        out += cfg.ip_placeholder, ++counts.ipv4;
        break;
      case PiiType::ipv6:
        out += cfg.ip_placeholder, ++counts.ipv6;
        break;
      case PiiType::phone:
        out += cfg.phone_placeholder, ++counts.phone;
        break;
    }
    pos = m.end;
  }
  out.append(text.substr(pos));
  return out;
}

}  // namespace kiln::curate
