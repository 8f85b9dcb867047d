// Lets xterm.js style itself under `style-src 'self'`. Measured (tests/web):
// xterm.js 6 makes three <style> elements (its scrollbar, and the DOM
// renderer's sizes and colours) and sets some `style` attributes, which a strict
// Content-Security-Policy blocks as inline styles. Here both go through the CSSOM
// instead, which the policy does not restrict: a <style> element's text becomes
// a constructed stylesheet adopted by the document, and a `style` attribute is
// set as the element's `style.cssText`. So the console needs no 'unsafe-inline'.

const create = Document.prototype.createElement;
Document.prototype.createElement = function createElement(tag, options) {
  if (String(tag).toLowerCase() !== 'style') return create.call(this, tag, options);
  // An inert element in its place: nothing of it is rendered or checked.
  const stand = create.call(this, 'template', options);
  const sheet = new CSSStyleSheet();
  let text = '';
  const doc = this;
  const adopt = () => {
    if (!doc.adoptedStyleSheets.includes(sheet)) doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  };
  Object.defineProperty(stand, 'textContent', {
    get: () => text,
    set: (v) => { text = String(v ?? ''); sheet.replaceSync(text); adopt(); },
  });
  stand.remove = function remove() {
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
    Element.prototype.remove.call(this);
  };
  Object.defineProperty(stand, 'sheet', { get: () => sheet });
  adopt();
  return stand;
};

const setAttribute = Element.prototype.setAttribute;
Element.prototype.setAttribute = function set(name, value) {
  if (String(name).toLowerCase() === 'style' && this.style) {
    this.style.cssText = String(value);
    return;
  }
  setAttribute.call(this, name, value);
};
