// Markdown source → top-level blocks, incrementally. No DOM; node's tests import it.
//
// While an answer streams, only its last block changes, so render.js renders each finished
// block once and re-renders only the tail. A block ends at a blank line (outside fenced code)
// that is followed by a line starting in column 0, unless both sides are items of the same
// list: CommonMark has closed every open block there (an indented line would continue a list
// item or an indented code block; a list item would continue the list). What a split still
// changes: a link reference definition only serves its own block.

const FENCE = /^ *(`{3,}|~{3,})/;
const LIST_ITEM = /^(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)/;
const BLANK = /^[ \t]*$/;

export class BlockSplitter {
  constructor() {
    this.block = ""; // complete lines of the unfinished block
    this.partial = ""; // the last line, still without its newline
    this.fence = null; // the opening fence ("```", "~~~~") while inside fenced code
    this.hasText = false; // the block has a non-blank line
    this.blankSeen = false; // a blank line followed the block's last non-blank line
    this.inList = false; // the last line in column 0 was a list item
  }

  /** Feed source text; returns the blocks it finished, in order (each with its newlines). */
  push(text) {
    const finished = [];
    if (text.includes("\n")) {
      const source = this.partial + text;
      let start = 0;
      for (let nl = source.indexOf("\n"); nl >= 0; nl = source.indexOf("\n", start)) {
        const done = this.line(source.slice(start, nl + 1));
        if (done !== null) finished.push(done);
        start = nl + 1;
      }
      this.partial = source.slice(start);
    } else {
      this.partial += text;
    }
    // A line that has begun in column 0 with a character no list marker starts with begins a
    // new block already: the finished one need not wait for the end of that line.
    if (this.blankSeen && this.partial && !/^[\s\-+*\d]/.test(this.partial)) {
      finished.push(this.block);
      this.block = "";
      this.blankSeen = this.inList = false;
    }
    return finished;
  }

  /** The unfinished block as it stands (the tail to render). */
  get tail() {
    return this.block + this.partial;
  }

  /** True while the tail ends inside a fenced code block that has not been closed. */
  get inFence() {
    // A partial line can open a fence as well.
    return this.fence !== null || this.opens(this.partial);
  }

  /** End of the source: returns the blocks not returned yet (the last line may end one). */
  end() {
    const finished = [];
    if (this.partial) {
      const done = this.line(this.partial);
      if (done !== null) finished.push(done);
    }
    if (this.block) finished.push(this.block);
    this.block = this.partial = "";
    this.fence = null;
    this.hasText = this.blankSeen = this.inList = false;
    return finished;
  }

  opens(line) {
    const match = FENCE.exec(line);
    // A backtick fence's info string may not contain a backtick (CommonMark 4.5).
    return match !== null && !(match[1][0] === "`" && line.slice(match[0].length).includes("`"));
  }

  line(line) {
    const body = line.replace(/\r?\n$/, "");
    if (this.fence !== null) {
      this.block += line;
      const match = FENCE.exec(body);
      if (
        match &&
        match[1][0] === this.fence[0] &&
        match[1].length >= this.fence.length &&
        BLANK.test(body.slice(match[0].length))
      ) {
        this.fence = null;
      }
      return null;
    }
    if (BLANK.test(body)) {
      this.block += line;
      this.blankSeen = this.hasText;
      return null;
    }
    let finished = null;
    const columnZero = body[0] !== " " && body[0] !== "\t";
    if (columnZero) {
      const item = LIST_ITEM.test(body);
      if (this.blankSeen && !(this.inList && item)) {
        finished = this.block;
        this.block = "";
      }
      this.inList = item;
    }
    this.blankSeen = false;
    this.hasText = true;
    this.block += line;
    // Fences may be indented when they sit in a list item; an indented code block that starts
    // with ``` would be taken for a fence too, which only delays the block's end.
    if (this.opens(body)) this.fence = FENCE.exec(body)[1];
    return finished;
  }
}

/** All blocks of a whole source, the last one included (for tests and stored answers). */
export function splitBlocks(source) {
  const splitter = new BlockSplitter();
  return [...splitter.push(source), ...splitter.end()];
}
