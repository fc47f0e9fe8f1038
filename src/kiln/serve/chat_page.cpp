#include "kiln/serve/chat_page.h"

namespace kiln::serve {

const std::string& chat_page_html() {
  static const std::string page = R"KILNHTML(<!doctype html>
<html><head><meta charset="utf-8"><title>kiln</title></head>
<body><p>kiln serve</p></body></html>
)KILNHTML";
  return page;
}

}  // namespace kiln::serve
