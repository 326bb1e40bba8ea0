// A small, safe markdown renderer: it builds DOM nodes and sets only textContent, so model
// output can never become HTML or script. Handles paragraphs, fenced and inline code,
// bold, italics, headings and lists: what chat answers use.
"use strict";

(function (global) {
  function inline(text, parent) {
    const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      if (match.index > last) parent.appendChild(document.createTextNode(text.slice(last, match.index)));
      const token = match[0];
      let el;
      if (token.startsWith("`")) { el = document.createElement("code"); el.textContent = token.slice(1, -1); }
      else if (token.startsWith("**")) { el = document.createElement("strong"); el.textContent = token.slice(2, -2); }
      else { el = document.createElement("em"); el.textContent = token.slice(1, -1); }
      parent.appendChild(el);
      last = match.index + token.length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function render(source, container) {
    container.replaceChildren();
    const lines = source.split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (line.startsWith("```")) {
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        const body = [];
        i += 1;
        while (i < lines.length && !lines[i].startsWith("```")) { body.push(lines[i]); i += 1; }
        code.textContent = body.join("\n");
        pre.appendChild(code);
        container.appendChild(pre);
        i += 1;
        continue;
      }
      const heading = /^(#{1,3})\s+(.*)$/.exec(line);
      if (heading) {
        const h = document.createElement(`h${heading[1].length + 2}`);
        inline(heading[2], h);
        container.appendChild(h);
        i += 1;
        continue;
      }
      if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
        const ordered = /^\s*\d+\./.test(line);
        const list = document.createElement(ordered ? "ol" : "ul");
        while (i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(lines[i])) {
          const item = document.createElement("li");
          inline(lines[i].replace(/^\s*([-*]|\d+\.)\s+/, ""), item);
          list.appendChild(item);
          i += 1;
        }
        container.appendChild(list);
        continue;
      }
      if (!line.trim()) { i += 1; continue; }
      const p = document.createElement("p");
      const para = [];
      while (i < lines.length && lines[i].trim() && !lines[i].startsWith("```")
             && !/^(#{1,3})\s/.test(lines[i]) && !/^\s*([-*]|\d+\.)\s+/.test(lines[i])) {
        para.push(lines[i]);
        i += 1;
      }
      inline(para.join("\n"), p);
      container.appendChild(p);
    }
  }

  global.renderMarkdown = render;
})(window);
