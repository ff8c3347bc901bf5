/* A table or a display equation wider than the text column had its right part hidden behind a scrollbar (one that
   overlay scrollbars do not even show): "treatm" was the last thing a reader saw of the claims table. Each one wider
   than its column is scaled down until it fits, to 80 % (tables) or 60 % (equations) of its size at the least. A table
   that still does not fit may then break its cells' names after an underscore (`fashion_mnist`), and as a last resort
   break the words of its text cells anywhere (not its headers, not its numbers: class `fit-text`, custom.css), and so
   fits; an equation that would need more keeps scrolling (and tests/test_docs_browser.py reports it). Again when the
   window is resized. */
(function () {
  const MIN = {table: 0.8, eq: 0.6};
  const scroller = el => getComputedStyle(el).display === 'block' ? el : el.parentElement;   // the box it must fit
  const wide = (el, box) => el.scrollWidth > box.clientWidth + 1;
  function fit(el, min) {
    el.style.fontSize = '';
    const box = scroller(el);
    let scale = 1;
    for (let i = 0; i < 8 && wide(el, box) && scale > min; i++) {
      scale = Math.max(min, scale * Math.min(0.99, (box.clientWidth - 2) / el.scrollWidth));
      el.style.fontSize = (100 * scale).toFixed(1) + '%';
    }
    return wide(el, box);
  }
  const text = /[A-Za-z_]{3,}/;   // a cell with a word in it, not a number ("-0.63 pp", "441 (526)", "[-1.13, -0.13]")
  function breakAfterUnderscores(t) {
    if (t.dataset.fitWbr) return;
    t.dataset.fitWbr = '1';
    const w = document.createTreeWalker(t, NodeFilter.SHOW_TEXT), nodes = [];
    while (w.nextNode()) if (w.currentNode.nodeValue.includes('_') && !w.currentNode.parentElement.closest('th')) nodes.push(w.currentNode);
    for (const n of nodes) {
      const parts = n.nodeValue.split('_'), frag = document.createDocumentFragment();
      parts.forEach((p, i) => { frag.append(p + (i < parts.length - 1 ? '_' : '')); if (i < parts.length - 1) frag.append(document.createElement('wbr')); });
      n.replaceWith(frag);
    }
  }
  const tables = () => document.querySelectorAll('.bd-article table').forEach(t => {
    const cells = [...t.querySelectorAll('td')].filter(c => text.test(c.textContent));
    cells.forEach(c => c.classList.remove('fit-text'));
    if (!fit(t, MIN.table)) return;
    breakAfterUnderscores(t);
    if (fit(t, MIN.table)) cells.forEach(c => c.classList.add('fit-text'));   // at the smallest size
  });
  const equations = () => document.querySelectorAll('.bd-article mjx-container[display="true"]').forEach(m => fit(m, MIN.eq));
  function all() { tables(); equations(); }
  document.addEventListener('DOMContentLoaded', () => {
    tables();
    // MathJax (deferred, so loaded by now) typesets after this: fit the equations once it has
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(equations);
  });
  let pending;
  window.addEventListener('resize', () => { clearTimeout(pending); pending = setTimeout(all, 100); });
})();
